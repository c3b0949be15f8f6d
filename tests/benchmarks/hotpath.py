"""The hot path against a raw-EVALSHA baseline: sequential (rows 1-2), four processes
on 1,000 ports (row 3), and batched checks (row 4)."""

from __future__ import annotations

import multiprocessing as mp
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier

import redis

from quota.gate import Gate
from quota.settings import Settings
from quota.topology import Client
from tests.benchmarks._measure import (
    Row,
    fmt,
    interleaved,
    paired_ratio,
    reset,
    script_time,
    time_calls,
)

TRIVIAL = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
HUGE = 10**14  # caps no benchmark reaches: every decision is an "ok" one


def past_hold(gate: Gate) -> None:
    """Wait out a loss's hold: `reset` deleting the prefix's keys under a gate that knew
    them is a data loss to it, and for a few seconds it decides by its outage policy."""
    deadline = time.monotonic() + 15
    while gate.check("bench-hold", 1).degraded and time.monotonic() < deadline:
        time.sleep(0.05)


def budgets(gate: Gate, ports: list[str]) -> None:
    past_hold(gate)
    for port in ports:
        gate.set_budget(
            port,
            enabled=True,
            soft_cap_tokens=HUGE // 2,
            hard_cap_tokens=HUGE,
            period="month",
            updated_by="bench",
        )


def operations(
    gate: Gate, raw: Client, ports: list[str], seed: int
) -> tuple[dict[str, Callable[[], object]], deque[str]]:
    """The calls measured, by name, and the queue through which reserve hands its
    reservation ids to commit."""
    sha = raw.script_load(TRIVIAL)
    trivial_key = f"{gate.settings.key_prefix}:{{q0}}:trivial"
    rng = random.Random(seed)
    held: deque[str] = deque()

    def reserve() -> None:
        held.append(gate.reserve(rng.choice(ports), 1500, "ocr").reservation_id or "")

    def commit() -> None:
        gate.commit(
            held.popleft(), input_tokens=1000, output_tokens=200, provider="openai", model="gpt-4o"
        )

    return {
        "baseline": lambda: raw.evalsha(sha, 1, trivial_key, 1),
        "check": lambda: gate.check(rng.choice(ports), 1500),
        "reserve": reserve,
        "commit": commit,
        "record": lambda: gate.record(
            port_id=rng.choice(ports),
            feature="ocr",
            provider="openai",
            model="gpt-4o",
            input_tokens=1000,
            output_tokens=200,
        ),
    }, held


NAMES = {
    "baseline": "baseline: raw redis-py EVALSHA of a one-key INCRBY script",
    "check": "gate.check",
    "reserve": "gate.reserve",
    "commit": "gate.commit",
    "record": "gate.record",
}


def bench_sequential(settings: Settings, client: redis.Redis, calls: int) -> list[Row]:
    reset(settings, client)
    with Gate(settings) as gate:
        ports = ["bench-port"]
        budgets(gate, ports)
        raw = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        timings = interleaved(operations(gate, raw, ports, seed=1)[0], calls)
        raw.close()
    base = Row(
        "sequential",
        NAMES["baseline"],
        timings["baseline"].per_second,
        "calls/s",
        timings["baseline"].p50_us,
        timings["baseline"].p99_us,
    )
    rows = [base]
    for name in ("check", "reserve", "commit", "record"):
        t = timings[name]
        row = Row("sequential", NAMES[name], t.per_second, "calls/s", t.p50_us, t.p99_us)
        rows.append(row.against(base, paired_ratio(t.rounds, timings["baseline"].rounds)))
    return rows


@dataclass
class _OpStats:
    """One process's share of one operation over all rounds."""

    rates: list[float] = field(default_factory=list)  # calls/s in each round
    calls: int = 0
    cpu_s: float = 0.0  # this process's CPU time (user + system)
    redis_cpu_s: float = 0.0  # Redis's, while the operation ran (first process only)
    script: tuple[float, float] = (0.0, 0.0)  # Redis µs and calls in the script command
    latencies: list[int] = field(default_factory=list)  # ns


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _process(
    settings: Settings,
    ports: list[str],
    seconds: float,
    rounds: int,
    seed: int,
    barrier: Barrier,
    out: mp.Queue[dict[str, _OpStats]],
) -> None:
    """Each operation for ``seconds`` in all, in ``rounds`` alternating slices. The
    first process also reads Redis's CPU time, and its time in the script command,
    around each slice."""
    gate = Gate(settings)
    raw = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    ops, held = operations(gate, raw, ports, seed)
    stats = {name: _OpStats() for name in ops}
    for _ in range(rounds):
        for name, fn in ops.items():
            st = stats[name]
            barrier.wait()  # every process runs the same operation at the same time
            redis_cpu = _redis_cpu(raw) if seed == 0 else 0.0
            script = script_time(raw, name == "baseline") if seed == 0 else (0.0, 0.0)
            calls = 0
            cpu = time.process_time()
            started = time.monotonic()
            # Commits settle what this round's reserves held, so they may run out first.
            while time.monotonic() - started < seconds / rounds and (name != "commit" or held):
                t0 = time.perf_counter_ns()
                fn()
                st.latencies.append(time.perf_counter_ns() - t0)
                calls += 1
            st.rates.append(calls / (time.monotonic() - started))
            st.calls += calls
            st.cpu_s += time.process_time() - cpu
            if seed == 0:
                st.redis_cpu_s += _redis_cpu(raw) - redis_cpu
                usec, n = script_time(raw, name == "baseline")
                st.script = (st.script[0] + usec - script[0], st.script[1] + n - script[1])
            # Reserve outruns commit, so settle what the slice left, untimed: every round
            # then starts with no holds, where carrying them over grew each port's open
            # set round after round (~60 holds by the last), and with it reserve's cost.
            while name == "commit" and held:
                fn()
    gate.close()
    for st in stats.values():
        st.latencies = st.latencies[:: max(1, len(st.latencies) // 2000)]
    out.put(stats)


def bench_processes(
    settings: Settings,
    client: redis.Redis,
    seconds: float,
    processes: int = 4,
    port_count: int = 1000,
    rounds: int = 4,
) -> list[Row]:
    """Throughput of ``processes`` processes together, per operation: the median over
    ``rounds`` interleaved rounds, so that a slow patch of the shared machine does not
    land on one operation alone; and the CPU each call costs the machine (clients and
    Redis), which is what bounds it on a machine with fewer cores than processes."""
    reset(settings, client)
    ports = [f"tenant-{i}" for i in range(port_count)]
    with Gate(settings) as gate:
        budgets(gate, ports)
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(processes)
    out: mp.Queue[dict[str, _OpStats]] = ctx.Queue()
    procs = [
        ctx.Process(target=_process, args=(settings, ports, seconds, rounds, i, barrier, out))
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    rows: list[Row] = []
    baseline: list[float] = []
    for name in ("baseline", "check", "reserve", "commit", "record"):
        per = [r[name] for r in results]
        by_round = [sum(st.rates[i] for st in per) for i in range(rounds)]
        baseline = baseline or by_round
        totals = sorted(by_round)
        lat = sorted(x for st in per for x in st.latencies)
        calls = sum(st.calls for st in per)
        client_us = sum(st.cpu_s for st in per) / calls * 1e6
        redis_us = sum(st.redis_cpu_s for st in per) / calls * 1e6
        script_usec, script_calls = (sum(x) for x in zip(*(st.script for st in per), strict=True))
        script_us = script_usec / script_calls if script_calls else 0.0
        row = Row(
            f"{processes} processes",
            NAMES[name] + f", {port_count:,} ports",
            totals[len(totals) // 2],
            "calls/s",
            lat[len(lat) // 2] / 1000,
            lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1000,
            note=f"median of {rounds} interleaved rounds, range {fmt(totals[0])}-"
            f"{fmt(totals[-1])}; CPU per call: clients {fmt(client_us)} µs, Redis "
            f"{fmt(redis_us)} µs ({fmt(script_us)} µs of it running the script)",
        )
        rows.append(row if not rows else row.against(rows[0], paired_ratio(by_round, baseline)))
    return rows


def bench_batched(
    settings: Settings, client: redis.Redis, batches: int, batch: int = 1000
) -> list[Row]:
    reset(settings, client)
    ports = [f"tenant-{i}" for i in range(batch)]
    with Gate(settings) as gate:
        budgets(gate, ports)
        requests = [(p, 1500) for p in ports]
        t = time_calls(lambda: gate.check_many(requests), batches, warmup=3)
    return [
        Row(
            "batched",
            f"gate.check_many, {batch:,} ports per call",
            t.per_second * batch,
            "decisions/s",
            t.p50_us,
            t.p99_us,
            note=f"latency per call of {batch:,}",
        )
    ]
