"""The benchmarks' paired ratio: a slow patch of the machine divides out of each round."""

from __future__ import annotations

import pytest

from tests.benchmarks._measure import Row, paired_ratio


def test_a_slow_round_does_not_move_the_paired_ratio() -> None:
    # Round 2 ran on a slow patch: both figures halved. Totals would put the operation
    # at (90 + 45 + 90) / (100 + 50 + 100) = 0.9; each round says 0.9 on its own.
    assert paired_ratio([90, 45, 90], [100, 50, 100]) == pytest.approx(0.9)
    # A patch that hit the baseline's slice of a round but not the operation's: the
    # median keeps one such round from moving the result.
    assert paired_ratio([90, 90, 90], [100, 50, 100]) == pytest.approx(0.9)


def test_rounds_must_pair_up() -> None:
    with pytest.raises(ValueError, match="zip"):
        paired_ratio([1.0, 2.0], [1.0])


def test_a_row_takes_the_paired_ratio_when_given() -> None:
    base = Row("s", "baseline", 100.0, "calls/s")
    row = Row("s", "op", 80.0, "calls/s")
    assert row.against(base).ratio == pytest.approx(0.8)
    assert row.against(base, 0.85).ratio == 0.85
