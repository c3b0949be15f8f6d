from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from quota import InvalidInput
from quota.periods import Windows, period_end, period_id, period_start


def utc(
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    second: int = 0,
    micro: int = 0,
) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        # day
        ("day", utc(2026, 11, 25, 13, 5), utc(2026, 11, 25), utc(2026, 11, 26)),
        ("day", utc(2026, 11, 25), utc(2026, 11, 25), utc(2026, 11, 26)),
        ("day", utc(2026, 11, 25, 23, 59, 59, 999999), utc(2026, 11, 25), utc(2026, 11, 26)),
        ("day", utc(2026, 12, 31, 22), utc(2026, 12, 31), utc(2027, 1, 1)),
        ("day", utc(2028, 2, 29, 12), utc(2028, 2, 29), utc(2028, 3, 1)),
        ("day", utc(2026, 11, 30, 1), utc(2026, 11, 30), utc(2026, 12, 1)),
        # week: Monday 00:00
        ("week", utc(2026, 11, 25, 9), utc(2026, 11, 23), utc(2026, 11, 30)),  # Wednesday
        ("week", utc(2026, 11, 23), utc(2026, 11, 23), utc(2026, 11, 30)),  # Monday 00:00
        ("week", utc(2026, 11, 29, 23, 59), utc(2026, 11, 23), utc(2026, 11, 30)),  # Sunday
        ("week", utc(2026, 11, 22, 12), utc(2026, 11, 16), utc(2026, 11, 23)),  # Sunday
        ("week", utc(2027, 1, 1, 8), utc(2026, 12, 28), utc(2027, 1, 4)),  # across a year
        ("week", utc(2028, 3, 1), utc(2028, 2, 28), utc(2028, 3, 6)),  # across a leap day
        ("week", utc(2024, 12, 31), utc(2024, 12, 30), utc(2025, 1, 6)),
        # month: the 1st
        ("month", utc(2026, 11, 25, 13), utc(2026, 11, 1), utc(2026, 12, 1)),
        ("month", utc(2026, 12, 31, 23, 59, 59), utc(2026, 12, 1), utc(2027, 1, 1)),
        ("month", utc(2027, 1, 1), utc(2027, 1, 1), utc(2027, 2, 1)),
        ("month", utc(2028, 2, 29, 23), utc(2028, 2, 1), utc(2028, 3, 1)),
        ("month", utc(2027, 2, 28, 23), utc(2027, 2, 1), utc(2027, 3, 1)),
        ("month", utc(2026, 1, 31, 12), utc(2026, 1, 1), utc(2026, 2, 1)),
    ],
)
def test_period_bounds(period: str, now: datetime, start: datetime, end: datetime) -> None:
    assert period_start(period, now) == start  # type: ignore[arg-type]
    assert period_end(period, now) == end  # type: ignore[arg-type]
    assert period_start(period, now) <= now < period_end(period, now)  # type: ignore[arg-type]


def test_other_timezones_are_converted_to_utc() -> None:
    # 01:00 on Monday in UTC+3 is still Sunday 22:00 UTC: last week.
    plus3 = datetime(2026, 11, 23, 1, tzinfo=timezone(timedelta(hours=3)))
    assert period_start("week", plus3) == utc(2026, 11, 16)
    assert period_start("day", plus3) == utc(2026, 11, 22)


def test_naive_datetimes_and_unknown_periods_are_refused() -> None:
    with pytest.raises(InvalidInput, match="naive"):
        period_start("day", datetime(2026, 11, 25))
    with pytest.raises(InvalidInput, match="unknown period"):
        period_start("year", utc(2026, 11, 25))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("period", "now", "expected"),
    [
        ("day", utc(2026, 11, 25, 5), "2026-11-25"),
        ("week", utc(2026, 11, 25, 5), "2026-11-23"),
        ("month", utc(2026, 11, 25, 5), "2026-11"),
    ],
)
def test_period_ids(period: str, now: datetime, expected: str) -> None:
    assert period_id(period, now) == expected  # type: ignore[arg-type]


def test_windows_day_lies_inside_week_and_month() -> None:
    for hours in range(0, 24 * 400, 7):
        now = utc(2027, 12, 1) + timedelta(hours=hours)
        w = Windows.at(now)
        assert w.week_start_ms <= w.day_start_ms
        assert w.month_start_ms <= w.day_start_ms
        assert w.day_expire_s * 1000 > w.day_end_ms
        assert w.day_start_ms <= int(now.timestamp() * 1000) < w.day_end_ms
