"""Rate limits side by side with `limits` on the same Redis, in the same race: 4
processes × 8 threads ask as fast as they can for a while, against a limit of 20 a
second; each admission is stamped on the client. Reported: decisions a second, and
the busiest second's admissions against what the algorithm promises (quota's bucket:
limit + burst in any window; `limits`' moving window: the limit; its sliding window
counter: the limit, approximately)."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from multiprocessing.synchronize import Barrier
from typing import Any

import redis
from limits import RateLimitItemPerSecond
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

from quota import Gate, RateLimit
from quota.settings import Settings
from tests.benchmarks._measure import Row, reset

PROCESSES, THREADS, LIMIT = 4, 8, 20
VARIANTS = ("limits moving window", "limits sliding window counter", "quota")


def _decider(variant: str, settings: Settings) -> tuple[Any, Any]:
    """A decision function for ``variant`` in this process, and what to close after."""
    if variant == "quota":
        gate = Gate(settings)
        return (lambda: gate.reserve("rate-race", 1, "chat").ok), gate.close
    storage = RedisStorage(settings.redis_url, key_prefix=f"{settings.key_prefix}:limits")
    item = RateLimitItemPerSecond(LIMIT)
    kind = MovingWindowRateLimiter if "moving" in variant else SlidingWindowCounterRateLimiter
    limiter = kind(storage)
    return (lambda: limiter.hit(item, "rate-race")), (lambda: None)


def _worker(
    variant: str, settings: Settings, seconds: float, barrier: Barrier, out: mp.Queue[Any]
) -> None:
    decide, close = _decider(variant, settings)
    calls, admitted = [0], []
    lock = threading.Lock()

    def thread() -> None:
        n, mine = 0, []
        barrier.wait()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ok = decide()
            n += 1
            if ok:
                mine.append(time.time())
        with lock:
            calls[0] += n
            admitted.extend(mine)

    threads = [threading.Thread(target=thread) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    close()
    out.put((calls[0], admitted))


def _busiest(stamps: list[float], window: float = 1.0) -> int:
    stamps = sorted(stamps)
    best, lo = 0, 0
    for hi, t in enumerate(stamps):
        while stamps[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _race(variant: str, settings: Settings, seconds: float) -> tuple[int, list[float]]:
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(PROCESSES * THREADS)
    out: mp.Queue[Any] = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(variant, settings, seconds, barrier, out))
             for _ in range(PROCESSES)]  # fmt: skip
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    return sum(c for c, _ in results), [t for _, stamps in results for t in stamps]


def bench_rate_race(settings: Settings, client: redis.Redis, seconds: float) -> list[Row]:
    reset(settings, client)
    with Gate(settings) as gate:
        gate.set_budget("rate-race", enabled=False, updated_by="bench",
                        rate_limits=[RateLimit(requests=LIMIT, per_seconds=1)])  # fmt: skip
    rows: list[Row] = []
    for variant in VARIANTS:
        calls, stamps = _race(variant, settings, seconds)
        promise = 2 * LIMIT if variant == "quota" else LIMIT
        busiest = _busiest(stamps)
        span = max(stamps) - min(stamps) if stamps else 0.0
        row = Row(
            "ratelimit",
            f"{variant}: decisions, 4 processes × 8 threads",
            calls / seconds,
            "calls/s",
            note=f"{len(stamps)} admitted in {span:.1f} s; busiest second {busiest} against a "
            f"promise of {promise} (overshoot {max(busiest - promise, 0)}); client-stamped",
        )
        rows.append(row if not rows else row.against(rows[0]))
    reset(settings, client)
    return rows
