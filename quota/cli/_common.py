"""Helpers shared by the CLI modules: output, and one gate per invocation."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from quota.gate import Gate
from quota.settings import Settings
from quota.tables import console as console  # re-exported: the CLI's output
from quota.tables import table as table


class WholeHelpGroup(click.Group):
    """A group whose command list shows each command's first sentence whole (click
    cuts it at the terminal's width with "..."); it wraps instead."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=1_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):  # Decision, UsageResult
        return {k: to_jsonable(v) for k, v in value._asdict().items()}
    if hasattr(value, "model_dump"):
        return value.model_dump()
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    return value


def print_json(value: Any) -> None:
    click.echo(json.dumps(to_jsonable(value), indent=2, sort_keys=True, default=str))


@contextmanager
def gate() -> Iterator[Gate]:
    with Gate(Settings(), report_risks=False) as g:  # `quota health` reports them
        yield g
