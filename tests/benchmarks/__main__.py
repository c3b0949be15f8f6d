"""``python -m tests.benchmarks [--quick] [--only SECTION] [--output FILE]``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from quota._exceptions import QuotaError
from quota.settings import Settings
from tests.benchmarks import SECTIONS, run


@click.command()
@click.option("--quick", is_flag=True, help="A few seconds: checks the harness, not speed.")
@click.option(
    "--only", multiple=True, type=click.Choice(sorted(SECTIONS)), help="Only these sections."
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the results as Markdown here (e.g. docs/BENCHMARKS.md).",
)
def main(quick: bool, only: tuple[str, ...], output: Path | None) -> None:
    """Measure throughput and latency (see docs/BENCHMARKS.md)."""
    try:
        run(
            Settings(),
            quick=quick,
            only=list(only),
            output=output,
            command="./scripts/bench" + (" --quick" if quick else ""),
        )
    except QuotaError as exc:  # a database or key prefix not the benchmarks' own
        click.echo(f"bench: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main(prog_name="bench")
