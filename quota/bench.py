"""`quota bench`: throughput and latency measurements, written to docs/BENCHMARKS.md.

Not part of the test suite (the tests only run ``--quick`` so the harness cannot rot).
Uses its own key prefix and database (./scripts/bench sets them) and cleans up after.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import redis
from redis.typing import EncodableT, FieldT
from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from quota.drain import Drainer
from quota.ids import uuid7
from quota.keys import KeyLayout
from quota.schema import TABLES
from quota.settings import Settings
from quota.store import make_engine


@dataclass(frozen=True)
class Row:
    section: str
    name: str
    value: float
    unit: str
    note: str = ""


def _entry(port: str, now_ms: int) -> dict[FieldT, EncodableT]:
    """A stream entry as record.lua writes it (typical OCR call sizes)."""
    return {
        "id": uuid7(),
        "port": port,
        "user": "",
        "feature": "ocr",
        "provider": "openai",
        "model": "gpt-4o",
        "in": "1500",
        "out": "300",
        "req": "",
        "at": str(now_ms),
    }


def fill_streams(
    settings: Settings, client: redis.Redis, count: int, ports: int = 1000, offset: int = 0
) -> None:
    layout = KeyLayout(settings.key_prefix, settings.shards)
    streams = [layout.for_port(f"port-{i}").stream for i in range(ports)]
    now_ms = int(time.time() * 1000)
    with client.pipeline(transaction=False) as pipe:
        for i in range(offset, offset + count):
            pipe.xadd(streams[i % ports], _entry(f"port-{i % ports}", now_ms))
            if i % 2000 == 1999:
                pipe.execute()
        pipe.execute()


def reset(settings: Settings, client: redis.Redis) -> None:
    keys = list(client.scan_iter(match=f"{settings.key_prefix}:*", count=5000))
    for i in range(0, len(keys), 5000):
        client.delete(*keys[i : i + 5000])
    engine = make_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE " + ", ".join(TABLES)))
    engine.dispose()


def bench_drain(settings: Settings, client: redis.Redis, count: int, runs: int = 3) -> list[Row]:
    """Events/s from full streams into Postgres, one drain process over every shard;
    the median of ``runs`` runs (the spread is in the note)."""
    rates = []
    for _ in range(runs):
        reset(settings, client)
        fill_streams(settings, client, count)
        engine = make_engine(settings.database_url)
        drainer = Drainer(settings, client, engine)
        start = time.perf_counter()
        for shard in range(settings.shards):
            drainer.drain_shard(shard, max_seconds=3600)
        rates.append(count / (time.perf_counter() - start))
        engine.dispose()
    return [
        Row(
            "drain",
            f"drain {count:,} queued events, 1 process",
            statistics.median(rates),
            "events/s",
            f"median of {runs}, range {min(rates):,.0f}-{max(rates):,.0f}; "
            f"batch {settings.drain_batch}",
        )
    ]


def bench_drain_parallel(
    settings: Settings, client: redis.Redis, count: int, processes: int = 2
) -> list[Row]:
    """The same, with the shards split over ``processes`` `quota drain` processes started
    together (as `quota worker --processes N` runs the per-shard jobs). Timed from
    before the processes start until the last one exits, start-up included."""
    reset(settings, client)
    fill_streams(settings, client, count)
    groups = [range(p, settings.shards, processes) for p in range(processes)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "quota", "drain", *[f"--shard={s}" for s in group]],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for group in groups
    ]
    for p in procs:
        p.wait()
    elapsed = time.perf_counter() - start
    return [
        Row(
            "drain",
            f"drain {count:,} queued events, {processes} processes",
            count / elapsed,
            "events/s",
            "process start-up included",
        )
    ]


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "quota", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def bench_lag(
    settings: Settings, client: redis.Redis, rate: int, seconds: float, workers: int
) -> list[Row]:
    """Oldest-undrained age while events arrive at ``rate``/s, drained by the real
    deployment: `quota cron` enqueueing per-shard drains, `quota worker` running them."""
    reset(settings, client)
    drainer = Drainer(settings, client, make_engine(settings.database_url))
    procs = [_spawn(["cron"]), _spawn(["worker", "--processes", str(workers)])]
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            ages = [lag.oldest_undrained_age_s or 0.0 for lag in drainer.lag()]
            samples.append(max(ages))
            time.sleep(0.2)

    try:
        time.sleep(3.0)  # let the scheduler and workers start
        sampler = threading.Thread(target=sample)
        sampler.start()
        sent, start, tick = 0, time.monotonic(), 0.05
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(elapsed * rate) - sent
            if due > 0:
                fill_streams(settings, client, due, offset=sent)
                sent += due
            time.sleep(tick)
        offered = sent / (time.monotonic() - start)
        stop.set()
        sampler.join()
    finally:
        for p in procs:
            p.terminate()
            p.wait()
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return [
        Row("lag", f"offered load ({workers} worker processes)", offered, "events/s"),
        Row("lag", "oldest undrained event, median", statistics.median(samples), "s"),
        Row("lag", "oldest undrained event, p99", p99, "s"),
        Row("lag", "oldest undrained event, max", samples[-1], "s"),
    ]


def _versions(client: redis.Redis, settings: Settings) -> tuple[str, str]:
    info = client.info("server")
    engine = make_engine(settings.database_url)
    with engine.connect() as conn:
        pg = conn.execute(text("SHOW server_version")).scalar_one()
    engine.dispose()
    return str(info["redis_version"]), str(pg)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_markdown(
    rows: list[Row], path: Path, settings: Settings, client: redis.Redis, command: str
) -> None:
    redis_v, pg_v = _versions(client, settings)
    lines = [
        "# Benchmarks",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `{command}` on "
        f"{os.cpu_count()} CPU(s) ({_cpu()}), Python {platform.python_version()}, "
        f"Redis {redis_v}, PostgreSQL {pg_v}; Redis, Postgres and the benchmark share "
        "the machine.",
        "",
        "| section | measurement | value | unit | note |",
        "| --- | --- | ---: | --- | --- |",
    ]
    lines += [
        f"| {r.section} | {r.name} | {r.value:,.3f} | {r.unit} | {r.note} |"
        if r.value < 100
        else f"| {r.section} | {r.name} | {r.value:,.0f} | {r.unit} | {r.note} |"
        for r in rows
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n" + NOTES)


NOTES = """
## How to read these

- **drain**: usage events already waiting in the shard streams (1,000 ports, 16 shards)
  are moved into the Postgres ledger by one drain process: XREADGROUP, COPY into a
  staging table, one INSERT … ON CONFLICT DO NOTHING that also updates the daily
  rollups, COMMIT, XACK, trim. Postgres work for batch N overlaps the Redis read and
  parse of batch N+1. Goal: ≥ 50,000 events/s on this 2-core machine.
- **drain, 2 processes**: the same, with the shards split over two `quota drain`
  processes, timed from their start (Python start-up included) to the last exit.
- **lag**: events are offered at a fixed rate (pipelined XADDs of the entries the gate's
  scripts write, so that the load generator does not need the CPU of the many worker
  processes that would produce them) while the real deployment drains them: one
  `quota cron` enqueueing a drain per shard every second and `quota worker` running
  them. The lag is the age of the oldest event not yet in Postgres, sampled every
  200 ms over all shards; with a one-second schedule it cannot be much below ~1 s.
  Goal: under 2 s at 20,000 events/s.
"""


SECTIONS: dict[str, Callable[[Settings, redis.Redis, bool], list[Row]]] = {
    "drain": lambda s, c, quick: bench_drain(
        s, c, 20_000 if quick else 300_000, runs=1 if quick else 3
    ),
    "drain-parallel": lambda s, c, quick: bench_drain_parallel(s, c, 20_000 if quick else 300_000),
    "lag": lambda s, c, quick: bench_lag(
        s, c, rate=2_000 if quick else 20_000, seconds=3 if quick else 20, workers=2
    ),
}


def run(
    settings: Settings, *, quick: bool, only: list[str], output: Path | None, command: str
) -> list[Row]:
    console = Console()
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    rows: list[Row] = []
    try:
        for name in only or list(SECTIONS):
            console.print(f"[bold]{name}[/] ...")
            rows += SECTIONS[name](settings, client, quick)
    finally:
        reset(settings, client)
    table = Table(title="quota benchmarks" + (" (quick)" if quick else ""), title_justify="left")
    for col in ("section", "measurement", "value", "unit", "note"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for r in rows:
        table.add_row(
            r.section,
            r.name,
            f"{r.value:,.3f}" if r.value < 100 else f"{r.value:,.0f}",
            r.unit,
            r.note,
        )
    console.print(table)
    if output is not None:
        write_markdown(rows, output, settings, client, command)
        console.print(f"written to {output}")
    client.close()
    return rows
