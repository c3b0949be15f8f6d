"""AsyncGate against Gate in the same run: one task awaiting reserves one after the
other, and 256 tasks reserving and committing at once against the sync gate's
sequential reserve+commit."""

from __future__ import annotations

import asyncio
import random
import statistics
import time

import redis

from quota.async_gate import AsyncGate
from quota.gate import Gate
from quota.settings import Settings
from tests.benchmarks._measure import Row, paired_ratio, reset
from tests.benchmarks.hotpath import budgets

PORTS = [f"bench-async-{i}" for i in range(100)]
TASKS = 256


def _pct(ns: list[int], q: float) -> float:
    ns.sort()
    return ns[min(len(ns) - 1, int(len(ns) * q))] / 1000


def _sync_pairs(gate: Gate, rng: random.Random, pairs: int, lat: list[int]) -> float:
    """``pairs`` reserve+commit pairs, one after the other: calls/s."""
    started = time.perf_counter()
    for _ in range(pairs):
        t0 = time.perf_counter_ns()
        d = gate.reserve(rng.choice(PORTS), 1500, "ocr")
        gate.commit(
            d.reservation_id or "", input_tokens=1000, output_tokens=200,
            provider="openai", model="gpt-4o",
        )  # fmt: skip
        lat.append(time.perf_counter_ns() - t0)
    return 2 * pairs / (time.perf_counter() - started)


async def _async_pairs(gate: AsyncGate, rng: random.Random, pairs: int, lat: list[int]) -> float:
    """``pairs`` reserve+commit pairs over TASKS concurrent tasks: calls/s."""
    left = pairs

    async def task() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            t0 = time.perf_counter_ns()
            d = await gate.reserve(rng.choice(PORTS), 1500, "ocr")
            await gate.commit(
                d.reservation_id or "", input_tokens=1000, output_tokens=200,
                provider="openai", model="gpt-4o",
            )  # fmt: skip
            lat.append(time.perf_counter_ns() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(task() for _ in range(TASKS)))
    return 2 * pairs / (time.perf_counter() - started)


async def _async_reserves(gate: AsyncGate, rng: random.Random, calls: int, lat: list[int]) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        await gate.reserve(rng.choice(PORTS), 1500, "ocr")
        lat.append(time.perf_counter_ns() - t0)
    return calls / (time.perf_counter() - started)


def _sync_reserves(gate: Gate, rng: random.Random, calls: int, lat: list[int]) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        gate.reserve(rng.choice(PORTS), 1500, "ocr")
        lat.append(time.perf_counter_ns() - t0)
    return calls / (time.perf_counter() - started)


def bench_async(settings: Settings, client: redis.Redis, calls: int, rounds: int) -> list[Row]:
    """Each pair of measurements alternates over ``rounds``, so that a slow patch of the
    machine lands on both; ratios are the median of the rounds' ratios."""
    reset(settings, client)
    # Reservations are never settled in the reserve-only rows: a short lease keeps the
    # open sets small, as in a real service.
    settings = settings.model_copy(update={"lease_seconds": 5})
    loop = asyncio.new_event_loop()
    rng = random.Random(3)
    per = max(1, calls // rounds)
    rates: dict[str, list[float]] = {k: [] for k in ("sync1", "async1", "syncpair", "asyncN")}
    lat: dict[str, list[int]] = {k: [] for k in rates}
    with Gate(settings) as gate:
        budgets(gate, PORTS)
        agate = AsyncGate(settings)
        run = loop.run_until_complete
        try:
            run(_async_reserves(agate, rng, 200, []))  # connected, copies loaded
            _sync_reserves(gate, rng, 200, [])
            for _ in range(rounds):
                rates["sync1"].append(_sync_reserves(gate, rng, per, lat["sync1"]))
                rates["async1"].append(run(_async_reserves(agate, rng, per, lat["async1"])))
                rates["syncpair"].append(_sync_pairs(gate, rng, per // 2, lat["syncpair"]))
                rates["asyncN"].append(run(_async_pairs(agate, rng, per * 2, lat["asyncN"])))
        finally:
            run(agate.aclose())
            loop.close()
    mean = {k: statistics.fmean(v) for k, v in rates.items()}
    sync1 = Row(
        "async", "gate.reserve, one thread (same run)", mean["sync1"], "calls/s",
        _pct(lat["sync1"], 0.5), _pct(lat["sync1"], 0.99),
    )  # fmt: skip
    async1 = Row(
        "async", "async_gate.reserve, one task", mean["async1"], "calls/s",
        _pct(lat["async1"], 0.5), _pct(lat["async1"], 0.99),
    ).against(sync1, paired_ratio(rates["async1"], rates["sync1"]))  # fmt: skip
    pair = Row(
        "async", "gate reserve+commit, one thread (same run)", mean["syncpair"], "calls/s",
        _pct(lat["syncpair"], 0.5), _pct(lat["syncpair"], 0.99),
        note="latency per reserve+commit pair",
    )  # fmt: skip
    many = Row(
        "async", f"async_gate reserve+commit, {TASKS} tasks", mean["asyncN"], "calls/s",
        _pct(lat["asyncN"], 0.5), _pct(lat["asyncN"], 0.99),
        note="latency per reserve+commit pair, queueing included",
    ).against(pair, paired_ratio(rates["asyncN"], rates["syncpair"]))  # fmt: skip
    return [sync1, async1, pair, many]
