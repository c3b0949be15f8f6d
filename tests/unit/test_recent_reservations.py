"""What a process remembers of its own reservations, for commit's fallback."""

from __future__ import annotations

import threading

from quota.reservations import RecentReservations


def test_feature_and_user_come_back_once() -> None:
    recent = RecentReservations(10)
    recent.add("a.p", "ocr", "erin@example.com")
    recent.add("b.p", "chat", None)
    assert recent.pop("a.p") == ("ocr", "erin@example.com")
    assert recent.pop("b.p") == ("chat", None)
    assert recent.pop("a.p") is None


def test_the_oldest_are_dropped_past_the_bound() -> None:
    recent = RecentReservations(3)
    for i in range(5):
        recent.add(f"r{i}.p", f"f{i}", None)
    assert [recent.pop(f"r{i}.p") for i in range(5)] == [
        None,
        None,
        ("f2", None),
        ("f3", None),
        ("f4", None),
    ]


def test_threads_adding_at_once_keep_it_bounded() -> None:
    recent = RecentReservations(100)

    def add(t: int) -> None:
        for i in range(2000):
            recent.add(f"{t}-{i}.p", "ocr", None)

    threads = [threading.Thread(target=add, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kept = [recent.pop(f"{t}-{i}.p") for t in range(8) for i in range(2000)]
    assert 90 <= sum(k is not None for k in kept) <= 100
