"""A throttled log line counts what it stands for."""

from __future__ import annotations

from quota.throttle import Every


def test_one_line_per_interval_with_the_count() -> None:
    now = [0.0]
    every = Every(10, clock=lambda: now[0])
    assert every.due() == 1  # the first is logged at once
    assert [every.due() for _ in range(5)] == [0] * 5
    now[0] = 10.0
    assert every.due() == 6  # the five held back, and this one
    assert every.due() == 0
