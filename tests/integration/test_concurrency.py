"""Many processes × threads racing on one port: reservations never overshoot the hard
cap; the seed's check-then-record does, in the very same race."""

from __future__ import annotations

import multiprocessing as mp
import random
import threading
from collections.abc import Callable
from multiprocessing.synchronize import Barrier

import pytest
import redis

from quota import Gate, Settings
from tests.conftest import stream_entries
from tests.racing import race_processes, run_threads


@pytest.fixture
def gate(sync_gate: Gate) -> Gate:
    """Threads racing on the sync gate (AsyncGate's tasks race in test_async.py)."""
    return sync_gate


PROCESSES, THREADS = 4, 8
HARD_CAP = 1_000
PORT = "race"


def _worker(settings: Settings, style: str, barrier: Barrier, out: mp.Queue[int]) -> None:
    """One process: THREADS threads; each spends until refused; reports tokens spent."""
    gate = Gate(settings)
    spent: list[int] = []
    lock = threading.Lock()

    def ours(rng: random.Random, first: bool) -> int | None:
        estimate = rng.randint(1, 120)
        d = gate.reserve(PORT, estimate, "race")
        if first:
            barrier.wait()  # everyone decided before anyone reports: the worst case
        if not d.ok:
            return None
        actual = rng.randint(0, estimate)
        gate.commit(
            d.reservation_id or "", input_tokens=actual, output_tokens=0, provider="p", model="m"
        )
        return actual

    def seed(rng: random.Random, first: bool) -> int | None:
        estimate = rng.randint(1, 120)
        d = gate.check(PORT, estimate)  # the seed: SUM, compare, then write later
        if first:
            barrier.wait()
        if not d.ok:
            return None
        gate.record(
            port_id=PORT,
            feature="race",
            provider="p",
            model="m",
            input_tokens=estimate,
            output_tokens=0,
        )
        return estimate

    step: Callable[[random.Random, bool], int | None] = ours if style == "ours" else seed

    def thread(n: int) -> None:
        rng = random.Random(n)
        total, first, refusals = 0, True, 0
        while refusals < 3:
            got = step(rng, first)
            first = False
            if got is None:
                refusals += 1
            else:
                total += got
        with lock:
            spent.append(total)

    run_threads(THREADS, thread)
    gate.close()
    out.put(sum(spent))


def race(gate: Gate, style: str) -> int:
    gate.set_budget(
        PORT,
        enabled=True,
        soft_cap_tokens=HARD_CAP // 2,
        hard_cap_tokens=HARD_CAP,
        period="day",
        updated_by="test",
    )
    totals = race_processes(_worker, (gate.settings, style), PROCESSES, PROCESSES * THREADS)
    return sum(totals)


def stream_total(gate: Gate, r: redis.Redis) -> int:
    entries = stream_entries(r, gate.layout.for_port(PORT).stream)
    return sum(int(f["in"]) + int(f["out"]) for _, f in entries)


def test_reservations_never_exceed_the_hard_cap(gate: Gate, r: redis.Redis) -> None:
    spent = race(gate, "ours")
    used = gate.current_period_tokens(PORT)
    assert used == spent  # every committed token counted, none twice
    assert used <= HARD_CAP
    assert used >= HARD_CAP // 2  # the race really ran into the cap
    print(f"reservations: {used} tokens against a hard cap of {HARD_CAP}")
    assert stream_total(gate, r) == used  # the ledger stream agrees with the counters
    assert gate.status(PORT).reserved_tokens == 0  # every hold returned


def test_the_seeds_check_then_record_overshoots_in_the_same_race(gate: Gate) -> None:
    spent = race(gate, "seed")
    used = gate.current_period_tokens(PORT)
    assert used == spent
    # All 32 callers passed the check at used=0 before any of them recorded.
    overshoot = used - HARD_CAP
    print(
        f"seed approach: {used} tokens against a hard cap of {HARD_CAP} "
        f"(+{overshoot}, {used / HARD_CAP:.1f}x)"
    )
    assert overshoot > 0
