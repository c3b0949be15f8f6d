"""`quota bench`: the hot path against a raw-EVALSHA baseline and against the
alternatives, the drain, and scale, written to docs/BENCHMARKS.md.

Not part of the test suite (the tests only run ``--quick`` so the harness cannot rot).
Uses its own key prefix and database (./scripts/bench sets them) and cleans up after.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import redis
from rich.console import Console
from rich.table import Table

from quota.bench import hotpath, ledger, peers, scale
from quota.bench._measure import Row, fmt, reset, write_markdown
from quota.settings import Settings

Section = Callable[[Settings, redis.Redis, bool], list[Row]]

SECTIONS: dict[str, Section] = {
    "sequential": lambda s, c, q: hotpath.bench_sequential(s, c, 2_000 if q else 20_000),
    "processes": lambda s, c, q: hotpath.bench_processes(s, c, 0.5 if q else 4.0),
    "batched": lambda s, c, q: hotpath.bench_batched(s, c, 3 if q else 50),
    "limits": lambda s, c, q: peers.bench_limits(s, c, 500 if q else 10_000),
    "seed": lambda s, c, q: peers.bench_seed(
        s, c, [1_000, 10_000] if q else [10_000, 100_000, 1_000_000], 200 if q else 3_000
    ),
    "drain": lambda s, c, q: ledger.bench_drain(s, c, 20_000 if q else 300_000, 1 if q else 3),
    "drain-parallel": lambda s, c, q: ledger.bench_drain_parallel(s, c, 20_000 if q else 300_000),
    "lag": lambda s, c, q: ledger.bench_lag(
        s, c, rate=2_000 if q else 20_000, seconds=3 if q else 20, workers=2
    ),
    "scale": lambda s, c, q: scale.bench_reconcile_and_memory(s, c, 500 if q else 10_000),
    "server": lambda s, c, q: scale.bench_server_time(s, c, 300 if q else 5_000),
}

NOTES = """
## How to read these

- **ratio** compares a row with the first row of its group, measured in the same run:
  the raw EVALSHA baseline (sequential, processes), `limits`' FixedWindow (peers), the
  same check on an empty ledger (seed), the trivial script (server).
- **sequential**: one process, one connection, 5 interleaved rounds per operation (so a
  slow patch of the shared machine hits all alike). `reserve` holds tokens under a
  lease; `commit` settles those same reservations.
- **4 processes**: four processes run each operation at the same time for a fixed time,
  over 1,000 ports; throughput is their sum.
- **batched**: `gate.check_many` with 1,000 ports per call (one script per shard,
  pipelined: one round trip).
- **peers**: `limits` keeps one counter per window; a quota reservation checks the hard
  cap with open holds, keeps a lease, counts day, week and month and per feature, and
  its commit appends the ledger event. The seed's check reads the budget and SUMs the
  port's ledger rows of the period in Postgres, so it grows with the ledger while
  `gate.check` never reads Postgres.
- **drain**: events waiting in the shard streams (1,000 ports) moved into the ledger:
  XREADGROUP, COPY into a staging table, one INSERT … ON CONFLICT DO NOTHING that also
  updates the rollups, COMMIT, XACK, trim; Postgres work for one batch overlaps the read
  of the next. **lag**: events offered at a fixed rate (pipelined XADDs of the entries
  the scripts write, so that the load generator needs no CPU for gate calls) while
  `quota cron` + `quota worker` drain them; the age of the oldest undrained event
  sampled every 200 ms. With a one-second schedule it cannot be much below ~1 s.
- **scale**: reconciliation reads counters and stream positions, catches the drain up,
  sums the ledger and corrects, for every active port. Memory is the INFO used_memory
  delta after 10,000 ports each got a budget and usage in two features.
- **server**: Redis-side time per EVALSHA from INFO commandstats.
"""


def run(
    settings: Settings, *, quick: bool, only: list[str], output: Path | None, command: str
) -> list[Row]:
    console = Console(width=None if sys.stdout.isatty() else 150)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    rows: list[Row] = []
    try:
        for name in only or list(SECTIONS):
            console.print(f"[bold]{name}[/] ...")
            rows += SECTIONS[name](settings, client, quick)
    finally:
        reset(settings, client)
    table = Table(title="quota benchmarks" + (" (quick)" if quick else ""), title_justify="left")
    for col in ("section", "measurement", "value", "unit", "p50 µs", "p99 µs", "ratio"):
        table.add_column(
            col, justify="left" if col in ("section", "measurement", "unit") else "right"
        )
    for r in rows:
        table.add_row(
            r.section,
            r.name,
            fmt(r.value),
            r.unit,
            fmt(r.p50_us),
            fmt(r.p99_us),
            "" if r.ratio is None else f"{r.ratio:.2f}×",
        )
    console.print(table)
    if output is not None:
        write_markdown(rows, output, settings, client, command, NOTES)
        console.print(f"written to {output}")
    client.close()
    return rows
