"""Operations: `quota db upgrade|worker|cron|drain|reconcile|status|health|demo`."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import click

from quota._exceptions import InvalidInput, QuotaError
from quota.cli._common import WholeHelpGroup, console, json_option, print_json
from quota.cli._common import table as make_table
from quota.settings import Settings
from quota.tables import plural
from quota.topology import sync_client


@click.group(cls=WholeHelpGroup)
def db() -> None:
    """Database maintenance."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create the database if it is missing, apply every migration, add partitions ahead."""
    from quota.migrate import upgrade

    click.echo(upgrade(Settings().database_url).describe(), err=True)


@db.command("current")
@json_option
def db_current(as_json: bool) -> int:
    """The database's schema revision, and whether it is the newest (exit 1 if not)."""
    from quota.migrate import current, history

    url = Settings().database_url
    now, head = current(url), history()[-1][0]
    if as_json:
        print_json({"current": now, "head": head, "up_to_date": now == head})
    elif now == head:
        click.echo(f"{now} (head): up to date")
    else:
        click.echo(f"{now or 'no schema'}; newest is {head}: run quota db upgrade")
    return 0 if now == head else 1


@db.command("history")
@json_option
def db_history(as_json: bool) -> None:
    """Every migration, oldest first, with the database's current one marked."""
    from quota.migrate import current, history

    now = current(Settings().database_url)
    steps = history()
    if as_json:
        print_json([{"revision": r, "doc": d, "current": r == now} for r, d in steps])
        return
    for revision, doc in steps:
        click.echo(f"{revision}{' (current)' if revision == now else ''}  {doc}")


# Set on the re-executed `quota worker` whose PROMETHEUS_MULTIPROC_DIR it made itself.
_MADE_METRICS_DIR = "QUOTA_WORKER_MADE_METRICS_DIR"


@click.command()
@click.option("--burst", is_flag=True, help="Exit once the queue is empty.")
@click.option(
    "--processes",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Worker processes (a pool); each runs jobs in-process, without forking.",
)
@click.option(
    "--metrics-port", type=click.IntRange(1, 65535), help="Serve Prometheus metrics on this port."
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="info: a summary line per QUOTA_WORKER_SUMMARY_SECONDS and every problem; "
    "debug: every job (RQ's lines too).",
)
def worker(burst: bool, processes: int, metrics_port: int | None, log_level: str) -> None:
    """Run RQ workers for the drain and reconcile jobs."""
    if metrics_port and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # prometheus-client picks its multi-process mode when first imported, which has
        # happened by now: start again with the directory set, for us and our children.
        if "worker" not in sys.argv:
            raise InvalidInput("set PROMETHEUS_MULTIPROC_DIR to use --metrics-port here")
        made = tempfile.mkdtemp(prefix="quota-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ[_MADE_METRICS_DIR] = made
        os.execv(sys.executable, [sys.executable, "-m", "quota", *sys.argv[1:]])
    import redis
    from rq.worker_pool import WorkerPool

    from quota import metrics_server
    from quota.worker import Worker

    level = log_level.upper()
    logging.getLogger("quota").setLevel(level)
    logging.getLogger("workers").setLevel(level)
    # RQ logs several lines per job: only its warnings, unless every job is wanted.
    rq_level = "DEBUG" if level == "DEBUG" else "WARNING"
    settings = Settings()
    if metrics_port:
        metrics_server.start(metrics_port)
    # RQ stores pickled jobs: its connection must not decode responses.
    conn = cast(redis.Redis, sync_client(settings.rq_url))
    made = os.environ.pop(_MADE_METRICS_DIR, "")
    try:
        if processes == 1:
            Worker([settings.queue], connection=conn).work(burst=burst, logging_level=rq_level)
        else:
            WorkerPool(
                [settings.queue], connection=conn, num_workers=processes, worker_class=Worker
            ).start(burst=burst, logging_level=rq_level)
    finally:
        if made:  # its files are this run's counters: nothing reads them after it
            shutil.rmtree(made, ignore_errors=True)


@click.command()
def cron() -> None:
    """Run the one `rq cron` scheduler (drains every second, reconcile nightly, UTC).

    A second `quota cron` waits as a standby and takes over if the active one dies.
    """
    import redis
    from rq.cron import CronScheduler

    os.environ["TZ"] = "UTC"  # RQ reads cron strings in local time; ours are UTC
    time.tzset()
    settings = Settings()
    conn = cast(redis.Redis, sync_client(settings.rq_url))
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


@click.command()
@click.option("--shard", type=int, multiple=True, help="Only these shards (default: all).")
@json_option
def drain(shard: tuple[int, ...], as_json: bool) -> None:
    """Drain the usage streams into the Postgres ledger now, until they are empty."""
    from quota.runtime import runtime

    rt = runtime()
    shards = shard or tuple(range(rt.settings.shards))
    bad = [s for s in shards if not 0 <= s < rt.settings.shards]
    if bad:
        raise InvalidInput(f"no shard {bad[0]}: shards are 0..{rt.settings.shards - 1}")
    results = [rt.drainer.drain_shard(s, max_seconds=3600) for s in shards]
    if as_json:
        print_json(results)
        return
    busy = [r for r in results if r.read or r.claimed or r.trimmed]
    total = sum(r.inserted for r in results)
    title = f"Drain: {plural(total, 'event')} inserted from {len(busy)} of {len(results)} shards"
    if not busy:
        console().print(title)
        return
    cols = ("shard", "read", "claimed", "inserted", "trimmed", "seconds")
    table = make_table(title, *cols, right=cols)
    for r in busy:
        table.add_row(
            str(r.shard),
            f"{r.read:,}",
            f"{r.claimed:,}",
            f"{r.inserted:,}",
            f"{r.trimmed:,}",
            f"{r.seconds:.3f}",
        )
    console().print(table)


@click.command()
@click.option("--dry-run", is_flag=True, help="Report drift without correcting it.")
@click.option("--port", "ports", multiple=True, help="Only these ports (repeatable).")
@json_option
def reconcile(dry_run: bool, ports: tuple[str, ...], as_json: bool) -> None:
    """Make the Redis counters equal the Postgres ledger (rebuilds them after data loss)."""
    from quota import validation
    from quota.runtime import runtime

    for p in ports:
        validation.port_id(p)
    report = runtime().reconciler.run(ports=list(ports) or None, dry_run=dry_run)
    if as_json:
        print_json(report.as_dict())
        return
    out = console()
    verb = "would correct" if dry_run else "corrected"
    out.print(
        f"{report.ports_checked:,} ports checked, {report.ports_drifted:,} drifted, "
        f"{verb} {report.tokens_corrected:,} tokens, {report.budgets_refreshed:,} "
        f"budget copies refreshed, in {report.seconds:.2f} s"
    )
    if report.drift:
        table = make_table("Drift (Postgres minus Redis)", "port", "counter", "delta",
                           right=["delta"])  # fmt: skip
        for port, fields in sorted(report.drift.items()):
            for name, delta in sorted(fields.items()):
                table.add_row(port, name, f"{delta:+,}")
        out.print(table)


@click.command()
@json_option
def status(as_json: bool) -> None:
    """Per-shard drain lag of the shards with undrained usage: stream length, pending
    entries, age of the oldest undrained."""
    from quota.runtime import runtime

    lags = runtime().drainer.lag()
    if as_json:
        print_json(lags)
        return
    waiting = [lag for lag in lags if lag.pending or lag.undelivered]
    idle = len(lags) - len(waiting)
    if not waiting:
        console().print(f"Usage streams: all {len(lags)} shards drained")
        return
    cols = ("shard", "length", "pending", "undelivered", "oldest undrained")
    title = f"Usage streams: {plural(len(waiting), 'shard')} waiting ({idle} drained)"
    table = make_table(title, *cols, right=cols)
    for lag in waiting:
        age = "-" if lag.oldest_undrained_age_s is None else f"{lag.oldest_undrained_age_s:.1f} s"
        table.add_row(
            str(lag.shard), f"{lag.length:,}", f"{lag.pending:,}", f"{lag.undelivered:,}", age
        )
    console().print(table)


def _check_redis() -> str:
    from quota.durability import redis_risks
    from quota.runtime import runtime
    from quota.topology import primaries

    nodes = primaries(runtime().redis)
    failures, warnings, version = [], [], ""
    for node in nodes:
        info = node.info()
        version = info["redis_version"]
        bad, risky = redis_risks(info)
        kw = node.get_connection_kwargs()
        prefix = f"{kw.get('host')}:{kw.get('port')}: " if len(nodes) > 1 else ""
        failures += [prefix + text for text in bad]
        warnings += [prefix + text for text in risky]
    if failures:
        raise QuotaError("; ".join(failures))
    what = f"Redis {version} answers" + (f" on {len(nodes)} primaries" if len(nodes) > 1 else "")
    return "; ".join([what, *warnings])


def _check_postgres() -> str:
    from alembic.script import ScriptDirectory
    from sqlalchemy import text

    from quota.migrate import alembic_config
    from quota.runtime import runtime

    rt = runtime()
    head = ScriptDirectory.from_config(alembic_config(rt.settings.database_url)).get_current_head()
    with rt.engine.connect() as conn:
        current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    if current != head:
        raise QuotaError(f"schema at {current}, code expects {head}: run `quota db upgrade`")
    return f"schema at {head}"


def _check_functions() -> str:
    from quota.runtime import runtime
    from quota.scripts import library

    lib = library()
    now = lib.ensure(runtime().redis)
    return f"function library {lib.name} loaded" + (" now" if now else "")


def _check_lag(max_lag: float) -> Callable[[], str]:
    def check() -> str:
        from quota.runtime import runtime

        ages = [lag.oldest_undrained_age_s or 0.0 for lag in runtime().drainer.lag()]
        worst = max(ages, default=0.0)
        if worst > max_lag:
            raise QuotaError(
                f"oldest undrained event is {worst:.1f} s old (> {max_lag:g} s): "
                "are `quota worker` and `quota cron` running?"
            )
        return f"oldest undrained event {worst:.1f} s old"

    return check


@click.command()
@click.option(
    "--max-lag",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0, 86400),  # also refuses nan: a check that could never fail
    help="Seconds an event may wait for the drain before it counts as unhealthy.",
)
@json_option
def health(max_lag: float, as_json: bool) -> int:
    """Check Redis, Postgres, the Lua function library and the drain lag. Exit 0 healthy, 1 not."""
    checks: list[tuple[str, Callable[[], str]]] = [
        ("redis", _check_redis),
        ("postgres", _check_postgres),
        ("functions", _check_functions),
        ("drain lag", _check_lag(max_lag)),
    ]
    results: list[dict[str, Any]] = []
    for name, run in checks:
        try:
            results.append({"check": name, "ok": True, "detail": run()})
        except Exception as exc:  # every failure is a finding, reported, never a traceback
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            results.append({"check": name, "ok": False, "detail": detail})
    healthy = all(r["ok"] for r in results)
    if as_json:
        print_json({"healthy": healthy, "checks": results})
    else:
        out = console()
        out.print("[bold]quota health[/]")
        for r in results:
            # A paragraph per check: a long detail wraps under its check, not in a cell.
            mark = "[green]ok  [/]" if r["ok"] else "[red]FAIL[/]"
            out.print(f"{mark} [bold]{r['check']}[/]: {r['detail']}", highlight=False)
    return 0 if healthy else 1


@click.command()
@click.option(
    "--processes",
    default=4,
    show_default=True,
    type=click.IntRange(1, 32),
    help="Worker processes.",
)
@click.option(
    "--seconds",
    default=8.0,
    show_default=True,
    type=click.FloatRange(1, 300),
    help="How long the workers run.",
)
@click.option(
    "--ports",
    default=10,
    show_default=True,
    type=click.IntRange(2, 1000),
    help="Ports with budgets.",
)
def demo(processes: int, seconds: float, ports: int) -> None:
    """Simulate worker processes calling LLMs through the gate, then report."""
    from quota.demo import run

    run(Settings(), processes=processes, seconds=seconds, ports=ports)
