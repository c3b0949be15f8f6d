"""The `quota` command. A thin shell over the library; errors become one line on stderr."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from quota._exceptions import QuotaError
from quota.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def _clean_errors(func: F) -> F:
    """Bad input or an unreachable backend: one clear line and exit 2, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (QuotaError, ValueError) as exc:
            click.echo(f"quota: {exc}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


@click.group()
def main() -> None:
    """quota: atomic per-tenant LLM token budgets (Redis gate, Postgres ledger)."""


@main.group()
def db() -> None:
    """Database maintenance."""


@db.command("upgrade")
@click.option(
    "--database-url",
    envvar="QUOTA_DATABASE_URL",
    default=None,
    help="Postgres URL (default: QUOTA_DATABASE_URL).",
)
@_clean_errors
def db_upgrade(database_url: str | None) -> None:
    """Create the database if it is missing and apply every migration."""
    from quota.migrate import upgrade

    url = database_url or Settings().database_url
    upgrade(url)
    click.echo("database is up to date", err=True)


@main.command()
@click.option("--processes", default=4, show_default=True, help="Worker processes.")
@click.option("--seconds", default=8.0, show_default=True, help="How long the workers run.")
@click.option("--ports", default=6, show_default=True, help="Ports with budgets.")
@_clean_errors
def demo(processes: int, seconds: float, ports: int) -> None:
    """Simulate worker processes calling LLMs through the gate, then report."""
    from quota.demo import run

    run(Settings(), processes=processes, seconds=seconds, ports=ports)
