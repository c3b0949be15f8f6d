"""Rows, timing and report writing shared by the benchmark sections."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import redis
from sqlalchemy import text

from quota.housekeeping import forget_prefix
from quota.schema import TABLES
from quota.settings import Settings
from quota.store import make_engine


@dataclass(frozen=True)
class Row:
    """One measurement. ``value`` is in ``unit``; latencies in microseconds."""

    section: str
    name: str
    value: float
    unit: str
    p50_us: float | None = None
    p99_us: float | None = None
    ratio: float | None = None  # value / the baseline's value, measured in the same run
    note: str = ""

    def against(self, baseline: Row, ratio: float | None = None) -> Row:
        """This row with its ratio to ``baseline``: ``ratio`` if given (a paired one,
        see `paired_ratio`), else the ratio of the two values."""
        return replace(self, ratio=self.value / baseline.value if ratio is None else ratio)


@dataclass(frozen=True)
class Timing:
    per_second: float
    p50_us: float
    p99_us: float
    rounds: tuple[float, ...] = ()  # calls/s in each interleaved round, in order


def paired_ratio(rates: Sequence[float], baseline: Sequence[float]) -> float:
    """The median over interleaved rounds of each round's ratio. The two were measured
    back to back within a round, so a slow patch of the shared machine, which lasts
    seconds to minutes, divides out of each round's ratio instead of landing on one
    operation's total."""
    return statistics.median(a / b for a, b in zip(rates, baseline, strict=True))


def time_calls(fn: Callable[[], object], calls: int, warmup: int = 200) -> Timing:
    """Sequential calls of ``fn``: throughput and per-call latency percentiles."""
    for _ in range(warmup):
        fn()
    latencies = []
    clock = time.perf_counter_ns
    started = time.perf_counter()
    for _ in range(calls):
        t0 = clock()
        fn()
        latencies.append(clock() - t0)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return Timing(
        calls / elapsed,
        latencies[len(latencies) // 2] / 1000,
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] / 1000,
    )


def interleaved(
    ops: dict[str, Callable[[], object]], calls: int, rounds: int = 20
) -> dict[str, Timing]:
    """Each operation ``calls`` times, in ``rounds`` alternating blocks so that a slow
    patch of the machine hits all of them alike; latencies merged over the rounds."""
    per: dict[str, list[Timing]] = {name: [] for name in ops}
    for _ in range(rounds):
        for name, fn in ops.items():
            per[name].append(time_calls(fn, calls // rounds, warmup=50))
    return {
        name: Timing(
            sum(t.per_second for t in ts) / len(ts),
            sorted(t.p50_us for t in ts)[len(ts) // 2],
            max(t.p99_us for t in ts),
            tuple(t.per_second for t in ts),
        )
        for name, ts in per.items()
    }


def timed_row(
    section: str,
    name: str,
    fn: Callable[[], object],
    calls: int,
    unit: str = "calls/s",
    note: str = "",
) -> Row:
    t = time_calls(fn, calls)
    return Row(section, name, t.per_second, unit, t.p50_us, t.p99_us, note=note)


def script_time(client: redis.Redis, baseline: bool) -> tuple[float, float]:
    """Redis's µs and calls so far in the command the scripts run as (INFO
    commandstats): the trivial baseline is an EVALSHA, the gate's operations FCALLs."""
    stat = client.info("commandstats").get(f"cmdstat_{'evalsha' if baseline else 'fcall'}")
    return (float(stat["usec"]), float(stat["calls"])) if stat else (0.0, 0.0)


def reset(settings: Settings, client: redis.Redis) -> None:
    """Remove everything under the bench prefix and empty the bench database."""
    forget_prefix(client, settings.key_prefix)  # the lag rows run RQ on its queue too
    engine = make_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE " + ", ".join(TABLES)))
    engine.dispose()


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


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return ""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}" if value >= 1 else f"{value:.3g}"


def write_markdown(
    rows: list[Row], path: Path, settings: Settings, client: redis.Redis, command: str, notes: str
) -> None:
    redis_v, pg_v = _versions(client, settings)
    lines = [
        "# Benchmarks",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `{command}` on "
        f"{os.cpu_count()} CPU(s) ({_cpu()}), Python {platform.python_version()}, "
        f"Redis {redis_v}, PostgreSQL {pg_v}. Redis, Postgres and the benchmark share the "
        "machine; every ratio compares two figures measured in this same run.",
        "",
        "| section | measurement | value | unit | p50 µs | p99 µs | ratio | note |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}×"
        lines.append(
            f"| {r.section} | {r.name} | {fmt(r.value)} | {r.unit} | "
            f"{fmt(r.p50_us)} | {fmt(r.p99_us)} | {ratio} | {r.note} |"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n" + notes)


def median(values: list[float]) -> float:
    return statistics.median(values)
