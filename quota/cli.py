"""The `quota` command. A thin shell over the library; errors become one line on stderr."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

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


def _console() -> Console:
    return Console(width=None if sys.stdout.isatty() else 120)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


@main.command()
@click.option("--shard", type=int, multiple=True, help="Only these shards (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_clean_errors
def drain(shard: tuple[int, ...], as_json: bool) -> None:
    """Drain the usage streams into the Postgres ledger once, until they are empty."""
    from workers.runtime import runtime

    rt = runtime()
    shards = shard or tuple(range(rt.settings.shards))
    for s in shards:
        if not 0 <= s < rt.settings.shards:
            raise QuotaError(f"no shard {s}: shards are 0..{rt.settings.shards - 1}")
    results = [rt.drainer.drain_shard(s, max_seconds=3600) for s in shards]
    if as_json:
        _print_json([dataclasses.asdict(r) for r in results])
        return
    table = Table(title="Drain", title_justify="left")
    for col in ("shard", "read", "claimed", "inserted", "trimmed", "seconds"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            str(r.shard),
            f"{r.read:,}",
            f"{r.claimed:,}",
            f"{r.inserted:,}",
            f"{r.trimmed:,}",
            f"{r.seconds:.3f}",
        )
    _console().print(table)


@main.command()
@click.option("--dry-run", is_flag=True, help="Report drift without correcting it.")
@click.option("--port", "ports", multiple=True, help="Only these ports (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_clean_errors
def reconcile(dry_run: bool, ports: tuple[str, ...], as_json: bool) -> None:
    """Make the Redis counters equal the Postgres ledger (rebuilds them after data loss)."""
    from quota import validation
    from workers.runtime import runtime

    for p in ports:
        validation.port_id(p)
    report = runtime().reconciler.run(ports=list(ports) or None, dry_run=dry_run)
    if as_json:
        _print_json(report.as_dict())
        return
    console = _console()
    verb = "would correct" if dry_run else "corrected"
    console.print(
        f"{report.ports_checked:,} ports checked, {report.ports_drifted:,} drifted, "
        f"{verb} {report.tokens_corrected:,} tokens, {report.budgets_refreshed:,} budget "
        f"copies refreshed, in {report.seconds:.2f} s"
    )
    if report.drift:
        table = Table(title="Drift (Postgres minus Redis)", title_justify="left")
        table.add_column("port")
        table.add_column("counter")
        table.add_column("delta", justify="right")
        for port, fields in sorted(report.drift.items()):
            for name, delta in sorted(fields.items()):
                table.add_row(port, name, f"{delta:+,}")
        console.print(table)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_clean_errors
def status(as_json: bool) -> None:
    """Per-shard drain lag: stream length, pending entries, age of the oldest undrained."""
    from workers.runtime import runtime

    lags = runtime().drainer.lag()
    if as_json:
        _print_json([dataclasses.asdict(lag) for lag in lags])
        return
    table = Table(title="Usage streams", title_justify="left")
    for col in ("shard", "length", "pending", "undelivered", "oldest undrained"):
        table.add_column(col, justify="right")
    for lag in lags:
        age = "-" if lag.oldest_undrained_age_s is None else f"{lag.oldest_undrained_age_s:.1f} s"
        table.add_row(
            str(lag.shard), f"{lag.length:,}", f"{lag.pending:,}", f"{lag.undelivered:,}", age
        )
    _console().print(table)


@main.command()
@click.option("--burst", is_flag=True, help="Exit once the queue is empty.")
@click.option(
    "--processes",
    default=1,
    show_default=True,
    help="Worker processes (a pool); each runs jobs in-process, without forking.",
)
@_clean_errors
def worker(burst: bool, processes: int) -> None:
    """Run RQ workers for the drain and reconcile jobs."""
    import redis
    from rq import SimpleWorker
    from rq.worker_pool import WorkerPool

    settings = Settings()
    # RQ stores pickled jobs: its connection must not decode responses.
    conn = redis.Redis.from_url(settings.redis_url)
    if processes <= 1:
        SimpleWorker([settings.queue], connection=conn).work(burst=burst)
    else:
        WorkerPool(
            [settings.queue], connection=conn, num_workers=processes, worker_class=SimpleWorker
        ).start(burst=burst)


@main.command()
@_clean_errors
def cron() -> None:
    """Run the one `rq cron` scheduler (drains every second, reconcile nightly, UTC).

    A second `quota cron` waits as a standby and takes over if the active one dies.
    """
    import os
    import threading
    import time

    import redis
    from rq.cron import CronScheduler

    os.environ["TZ"] = "UTC"  # RQ reads cron strings in local time; ours are UTC
    time.tzset()
    settings = Settings()
    conn = redis.Redis.from_url(settings.redis_url)
    lease = settings.cron_lease_seconds
    # thread_local=False: the lease is renewed from another thread than the one that took it.
    lock = conn.lock(f"{settings.key_prefix}:cron-leader", timeout=lease, thread_local=False)
    click.echo("quota cron: waiting to be the only active scheduler", err=True)
    lock.acquire(blocking=True)
    click.echo("quota cron: active", err=True)

    def keep_leading() -> None:
        while True:
            time.sleep(lease / 3)
            try:
                lock.reacquire()
            except Exception as exc:
                # Lost the lease (Redis down or too slow): stop, so two never run at once.
                click.echo(f"quota cron: lost the scheduler lease ({exc}), stopping", err=True)
                os._exit(3)

    threading.Thread(target=keep_leading, daemon=True).start()
    scheduler = CronScheduler(connection=conn)
    scheduler.load_config_from_file("workers.cron_config")
    scheduler.start()  # type: ignore[no-untyped-call]  # rq leaves it unannotated


@main.command()
@click.option("--quick", is_flag=True, help="A few seconds: checks the harness, not speed.")
@click.option("--only", multiple=True, help="Only these sections (repeatable).")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the results as Markdown here (e.g. docs/BENCHMARKS.md).",
)
@_clean_errors
def bench(quick: bool, only: tuple[str, ...], output: Path | None) -> None:
    """Measure drain throughput and lag (see docs/BENCHMARKS.md)."""
    from quota import bench as harness

    unknown = set(only) - set(harness.SECTIONS)
    if unknown:
        raise QuotaError(
            f"unknown section(s) {sorted(unknown)}: choose from {sorted(harness.SECTIONS)}"
        )
    harness.run(
        Settings(),
        quick=quick,
        only=list(only),
        output=output,
        command="./scripts/bench" + (" --quick" if quick else ""),
    )
