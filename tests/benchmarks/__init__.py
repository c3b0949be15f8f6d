"""`./scripts/bench` (``python -m tests.benchmarks``): the hot path against a raw-EVALSHA
baseline and against the alternatives, AsyncGate, the drain, and scale, written to
docs/BENCHMARKS.md.

Not part of the installed package (it needs the test extras, limits among them) nor of
the test suite (the tests only run ``--quick`` so the harness cannot rot).
Uses its own key prefix and database (./scripts/bench sets them) and cleans up after.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import redis
from rich.console import Console
from rich.table import Table

from quota.housekeeping import require_own
from quota.settings import Settings
from tests.benchmarks import (
    app,
    asyncgate,
    client,
    cluster,
    hotpath,
    instructions,
    ledger,
    peers,
    ratelimits,
    scale,
    serve,
)
from tests.benchmarks._measure import Row, fmt, reset, write_markdown

# How to read the figures, and where the time goes: prose, kept as Markdown beside
# this module and copied into the output after the targets.
_PROSE = ("notes.md", "analysis.md", "partial.md")

Section = Callable[[Settings, redis.Redis, bool], list[Row]]

SECTIONS: dict[str, Section] = {
    "sequential": lambda s, c, q: hotpath.bench_sequential(s, c, 2_000 if q else 20_000),
    "processes": lambda s, c, q: hotpath.bench_processes(
        s, c, 0.5 if q else 8.0, rounds=2 if q else 16
    ),
    "batched": lambda s, c, q: hotpath.bench_batched(s, c, 3 if q else 50),
    "limits": lambda s, c, q: peers.bench_limits(s, c, 500 if q else 10_000),
    "drain": lambda s, c, q: ledger.bench_drain(s, c, 20_000 if q else 300_000, 1 if q else 3),
    "drain-parallel": lambda s, c, q: ledger.bench_drain_parallel(s, c, 20_000 if q else 300_000),
    "lag": lambda s, c, q: ledger.bench_lag(
        s, c, rate=2_000 if q else 20_000, seconds=3 if q else 20, workers=2
    ),
    "seed": lambda s, c, q: peers.bench_seed(
        s, c, [1_000, 10_000] if q else [10_000, 100_000, 1_000_000], 200 if q else 3_000
    ),
    "scale": lambda s, c, q: scale.bench_reconcile_and_memory(s, c, 500 if q else 10_000),
    "server": lambda s, c, q: scale.bench_server_time(s, c, 300 if q else 5_000),
    "instructions": lambda s, c, q: instructions.bench_instructions(s, 50 if q else 1_000),
    "client": lambda s, c, q: client.bench_client(s, c, 500 if q else 10_000),
    "async": lambda s, c, q: asyncgate.bench_async(s, c, 2_000 if q else 40_000, 4 if q else 10),
    "app": lambda s, c, q: app.bench_app(s, c, 2 if q else 10, 1 if q else 3),
    "ratelimit": lambda s, c, q: ratelimits.bench_rate_race(s, c, 1.0 if q else 8.0),
    "serve": lambda s, c, q: serve.bench_serve(s, c, 1.0 if q else 8.0, 1 if q else 5),
    "dashboard": lambda s, c, q: serve.bench_dashboard(
        s, c, 200 if q else 10_000, 20_000 if q else 10_000_000, 5 if q else 60
    ),
    "cluster": lambda s, c, q: cluster.bench_cluster(
        s, 0.5 if q else 4.0, 2 if q else 6, 2 if q else 20
    ),
}


# (target, row name it reads, "ratio" or "value", goal, True if higher is better)
TARGETS: list[tuple[str, str, str, float, bool]] = [
    ("check, sequential, vs raw EVALSHA", "gate.check", "ratio", 0.85, True),
    ("reserve, sequential, vs raw EVALSHA", "gate.reserve", "ratio", 0.85, True),
    ("commit, sequential, vs raw EVALSHA", "gate.commit", "ratio", 0.75, True),
    ("record, sequential, vs raw EVALSHA", "gate.record", "ratio", 0.75, True),
    (
        "check, 4 processes, vs the same on raw EVALSHA",
        "gate.check, 1,000 ports",
        "ratio",
        0.8,
        True,
    ),
    ("reserve, 4 processes", "gate.reserve, 1,000 ports", "ratio", 0.8, True),
    ("commit, 4 processes", "gate.commit, 1,000 ports", "ratio", 0.8, True),
    ("record, 4 processes", "gate.record, 1,000 ports", "ratio", 0.8, True),
    ("batched check, decisions/s", "gate.check_many, 1,000 ports per call", "value", 100_000, True),
    (
        "check at 1M ledger rows vs empty (paired throughput ratio)",
        "gate.check, 1,000,000 ledger rows",
        "ratio",
        1 / 1.1,
        True,
    ),
    ("check faster than limits FixedWindow", "gate.check (same run)", "ratio", 1.0, True),
    ("reserve faster than limits FixedWindow", "gate.reserve (same run)", "ratio", 1.0, True),
    ("Redis time per reserve, µs", "Redis time per call: reserve", "value", 15, False),
    ("Redis memory per active port, bytes", "Redis memory per active port", "value", 1024, False),
    ("drain, events/s, 1 process", "drain 300,000 queued events, 1 process", "value", 50_000, True),
    (
        "drain, events/s, 2 processes",
        "drain 300,000 queued events, 2 processes",
        "value",
        50_000,
        True,
    ),
    ("lag p99 at 20,000 events/s, s", "oldest undrained event, p99", "value", 2.0, False),
    ("reconcile 10,000 ports, s", "reconcile 10,000 active ports", "value", 10.0, False),
    ("AsyncGate.reserve, one task, vs Gate", "async_gate.reserve, one task", "ratio", 0.8, True),
    (
        "AsyncGate reserve+commit, 256 tasks, vs Gate sequential",
        "async_gate reserve+commit, 256 tasks",
        "ratio",
        3.0,
        True,
    ),
    ("example app with AsyncGate vs no gate", "example app, AsyncGate", "ratio", 0.85, True),
    (
        "reserve+commit on a 3-primary cluster vs one server, same machine",
        "reserve+commit, cluster of 3 primaries + 3 replicas",
        "ratio",
        0.9,
        True,
    ),
    (
        "FCALLs per call on the cluster (one round trip)",
        "FCALLs per call on the cluster",
        "value",
        1.0,
        False,
    ),
    (
        "reserve with 2 rate limits + a feature cap, Redis instructions vs without",
        "Redis instructions per call: reserve, 2 rate limits + a feature cap",
        "ratio",
        1.3,
        False,
    ),
]


def _goal_text(field: str, goal: float, higher: bool, unit: str = "") -> str:
    sign = "≥" if higher else "≤"
    return f"{sign} {goal:.2f}×" if field == "ratio" else f"{sign} {fmt(goal)} {unit}".rstrip()


def with_goals(rows: list[Row]) -> list[Row]:
    """Each row a target reads, with its goal in its note: TARGETS is the one place a
    goal is written."""
    goals = {name: (field, goal, higher) for _, name, field, goal, higher in TARGETS}
    out = []
    for r in rows:
        if r.name in goals:
            goal = "goal " + _goal_text(*goals[r.name], r.unit)
            r = replace(r, note=f"{r.note}; {goal}" if r.note else goal)
        out.append(r)
    return out


def targets_markdown(rows: list[Row]) -> str:
    """Where each target stands in this run (targets whose rows did not run are left out)."""
    by_name = {r.name: r for r in rows}
    lines = [
        "",
        "## Targets",
        "",
        "| target | goal | this run | met |",
        "| --- | ---: | ---: | --- |",
    ]
    for label, name, field, goal, higher in TARGETS:
        row = by_name.get(name)
        got = None if row is None else (row.ratio if field == "ratio" else row.value)
        if got is None:
            continue
        met = got >= goal if higher else got <= goal
        shown = f"{got:.2f}×" if field == "ratio" else fmt(got)
        goal_text = _goal_text(field, goal, higher)
        lines.append(f"| {label} | {goal_text} | {shown} | {'yes' if met else '**no**'} |")
    return "\n".join(lines) + "\n"


def _prose() -> str:
    here = Path(__file__).parent
    return "".join("\n" + (here / name).read_text(encoding="utf-8") for name in _PROSE)


def run(
    settings: Settings, *, quick: bool, only: list[str], output: Path | None, command: str
) -> list[Row]:
    require_own(settings, "bench")
    console = Console(width=None if sys.stdout.isatty() else 150)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    rows: list[Row] = []
    try:
        for name in only or list(SECTIONS):
            console.print(f"[bold]{name}[/] ...")
            rows += SECTIONS[name](settings, client, quick)
    finally:
        reset(settings, client)
    rows = with_goals(rows)
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
        write_markdown(rows, output, settings, client, command, targets_markdown(rows) + _prose())
        console.print(f"written to {output}")
    client.close()
    return rows
