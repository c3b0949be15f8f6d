"""Rate limits and feature caps under 4 processes × 8 threads racing on one port.

Admission times are read from Redis itself: an admitted reservation's member sits in
the port's open set scored by its lease's end, the server's time of admission plus the
lease. So every sliding window is checked exactly, on the server's clock."""

from __future__ import annotations

import multiprocessing as mp
import random
import threading
import time
from collections.abc import Callable
from multiprocessing.synchronize import Barrier
from typing import cast

import pytest
import redis

from quota import Gate, RateLimit, Settings
from tests.racing import race_processes, run_threads

PROCESSES, THREADS = 4, 8
RACE_SECONDS = 10.0
REQUESTS = RateLimit(requests=20, per_seconds=1)
TOKENS = RateLimit(tokens=2_000, per_seconds=1)
CAPPED, OTHER, FEATURE_CAP = "ocr", "chat", 1_000


@pytest.fixture
def gate(sync_gate: Gate) -> Gate:
    return sync_gate


def _rate_worker(settings: Settings, barrier: Barrier, out: mp.Queue[tuple[int, int]]) -> None:
    gate = Gate(settings)
    counts = [0, 0]  # admitted, refused
    lock = threading.Lock()

    def thread(n: int) -> None:
        rng = random.Random(n)
        barrier.wait()
        deadline = time.monotonic() + RACE_SECONDS
        while time.monotonic() < deadline:
            d = gate.reserve("rated", rng.randint(1, 200), "chat")
            with lock:
                counts[0 if d.ok else 1] += 1
            if not d.ok:  # a well-behaved caller waits as long as it is told
                time.sleep((d.retry_after_ms or 1) / 1000)

    run_threads(THREADS, thread)
    gate.close()
    out.put((counts[0], counts[1]))


def _race(gate: Gate, target: Callable[..., None]) -> list[tuple[int, int]]:
    return race_processes(target, (gate.settings,), PROCESSES, PROCESSES * THREADS)


def _most_in_a_window(times_and_units: list[tuple[int, int]], window_ms: int) -> int:
    """The most units admitted in any window [t, t + window_ms) of the server's clock."""
    events = sorted(times_and_units)
    best, total, lo = 0, 0, 0
    for t, units in events:
        total += units
        while events[lo][0] <= t - window_ms:
            total -= events[lo][1]
            lo += 1
        best = max(best, total)
    return best


def test_no_window_admits_more_than_its_limit_and_burst(gate: Gate, r: redis.Redis) -> None:
    gate.set_budget("rated", enabled=True, soft_cap_tokens=10**9, hard_cap_tokens=10**10,
                    rate_limits=[REQUESTS, TOKENS], updated_by="test")  # fmt: skip
    results = _race(gate, _rate_worker)
    admitted = sum(a for a, _ in results)
    refused = sum(b for _, b in results)
    lease_ms = int(gate.settings.lease_seconds * 1000)
    held = cast(
        list[tuple[str, float]],
        r.zrange(gate.layout.for_port("rated").open, 0, -1, withscores=True),
    )
    assert len(held) == admitted  # every admission is in the open set, none lapsed
    admissions = [(int(score) - lease_ms, int(m.split(":")[1])) for m, score in held]
    most_requests = _most_in_a_window([(t, 1) for t, _ in admissions], 1000)
    most_tokens = _most_in_a_window(admissions, 1000)
    span_ms = max(t for t, _ in admissions) - min(t for t, _ in admissions)
    print(
        f"rate race: {admitted} admitted, {refused} refused in {span_ms} ms; busiest second: "
        f"{most_requests} requests (limit + burst 40), {most_tokens} tokens (limit + burst 4000)"
    )
    assert refused > admitted  # the race really pressed on the limits
    assert most_requests <= REQUESTS.limit + REQUESTS.size
    assert most_tokens <= TOKENS.limit + TOKENS.size
    # Over the whole race: the bucket, plus what drained while it ran. Overshoot: 0.
    assert admitted <= REQUESTS.size + REQUESTS.limit * span_ms // 1000
    assert sum(u for _, u in admissions) <= TOKENS.size + TOKENS.limit * span_ms // 1000


def _cap_worker(settings: Settings, barrier: Barrier, out: mp.Queue[tuple[int, int]]) -> None:
    gate = Gate(settings)
    spent = [0, 0]  # capped feature, other feature
    lock = threading.Lock()

    def thread(n: int) -> None:
        rng = random.Random(n)
        barrier.wait()
        refusals = 0
        while refusals < 3:
            feature = CAPPED if n % 2 else OTHER
            estimate = rng.randint(1, 60)
            d = gate.reserve("capped", estimate, feature)
            if not d.ok:
                assert d.reason == "feature-cap-exceeded"
                assert feature == CAPPED
                refusals += 1
                continue
            actual = rng.randint(0, estimate)
            gate.commit(d.reservation_id or "", input_tokens=actual, output_tokens=0,
                        provider="x", model="m")  # fmt: skip
            with lock:
                spent[0 if feature == CAPPED else 1] += actual
            if feature == OTHER and spent[1] > 3 * FEATURE_CAP:
                break

    run_threads(THREADS, thread)
    gate.close()
    out.put((spent[0], spent[1]))


def test_racing_reservations_never_pass_a_feature_cap_while_others_proceed(gate: Gate) -> None:
    gate.set_budget("capped", enabled=True, soft_cap_tokens=10**6, hard_cap_tokens=10**7,
                    feature_caps={CAPPED: FEATURE_CAP}, updated_by="test")  # fmt: skip
    results = _race(gate, _cap_worker)
    capped = gate.current_period_tokens("capped", CAPPED)
    other = gate.current_period_tokens("capped", OTHER)
    assert capped == sum(c for c, _ in results)
    assert other == sum(o for _, o in results)
    print(f"feature cap race: {capped} of {FEATURE_CAP} on {CAPPED}, {other} on {OTHER}")
    assert capped <= FEATURE_CAP
    assert capped >= FEATURE_CAP // 2  # it really ran into the cap
    assert other > FEATURE_CAP  # the other feature was never held back
    assert gate.status("capped").reserved_tokens == 0
