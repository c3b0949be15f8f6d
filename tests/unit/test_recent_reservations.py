"""Which reservations this process made, for commit's fallback."""

from __future__ import annotations

import threading

from quota.reservations import RecentReservations


def test_an_id_comes_back_once() -> None:
    recent = RecentReservations(10)
    recent.add("a")
    recent.add("b")
    assert recent.pop("a") is True
    assert recent.pop("b") is True
    assert recent.pop("a") is False
    assert recent.pop("never") is False


def test_the_oldest_are_dropped_past_the_bound() -> None:
    recent = RecentReservations(3)
    for i in range(5):
        recent.add(f"r{i}")
    assert [recent.pop(f"r{i}") for i in range(5)] == [False, False, True, True, True]


def test_threads_adding_at_once_keep_it_bounded() -> None:
    recent = RecentReservations(100)

    def add(t: int) -> None:
        for i in range(2000):
            recent.add(f"{t}-{i}")

    threads = [threading.Thread(target=add, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kept = [recent.pop(f"{t}-{i}") for t in range(8) for i in range(2000)]
    assert 90 <= sum(kept) <= 100
