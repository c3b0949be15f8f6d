"""Calendar periods in UTC: day from 00:00, week from Monday 00:00, month from the 1st.

Pure functions. Naive datetimes are refused: a budget period is a UTC notion and a
naive value would silently mean the host's local time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, get_args

from quota._exceptions import InvalidInput

DAY_MS = 86_400_000

Period = Literal["day", "week", "month"]
PERIODS: tuple[Period, ...] = get_args(Period)


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise InvalidInput("period maths needs an aware datetime (UTC), got a naive one")
    return now.astimezone(UTC)


def check_period(period: object) -> Period:
    """Return ``period`` if it is one of ``day``, ``week``, ``month``; else raise."""
    if isinstance(period, str) and period in PERIODS:
        return period
    raise InvalidInput(f"unknown period {period!r}: expected one of day, week, month")


def period_start(period: Period, now: datetime) -> datetime:
    """Start (inclusive) of the ``period`` that contains ``now``, in UTC."""
    check_period(period)
    day = _utc(now).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())  # weekday(): Monday == 0
    return day.replace(day=1)


def period_end(period: Period, now: datetime) -> datetime:
    """End (exclusive) of the ``period`` that contains ``now``: the next period's start."""
    start = period_start(period, now)
    if period == "day":
        return start + timedelta(days=1)
    if period == "week":
        return start + timedelta(days=7)
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


def period_id(period: Period, now: datetime) -> str:
    """A short, sortable name of the period containing ``now`` (used in Redis keys)."""
    start = period_start(period, now)
    if period == "month":
        return start.strftime("%Y-%m")
    return start.strftime("%Y-%m-%d")


def to_ms(moment: datetime) -> int:
    return int(_utc(moment).timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


@dataclass(frozen=True, slots=True)
class Windows:
    """The three periods containing one instant: the ids that name the usage keys,
    their boundaries and the counters' expiry.

    A day lies inside exactly one week and one month, so the Lua functions only
    verify that the server's clock falls in the client's `day`: if it does, every id
    here is the server's too.
    """

    day_id: str
    week_id: str
    month_id: str
    day_start_ms: int
    day_end_ms: int
    week_start_ms: int
    month_start_ms: int
    #: EXPIREAT (seconds) of each period's counters: a grace day past its end,
    #: so a just-closed period can still be read and reconciled.
    day_expire_s: int
    week_expire_s: int
    month_expire_s: int

    @classmethod
    def at(cls, now: datetime) -> Windows:
        grace = timedelta(days=1)
        return cls(
            day_id=period_id("day", now),
            week_id=period_id("week", now),
            month_id=period_id("month", now),
            day_start_ms=to_ms(period_start("day", now)),
            day_end_ms=to_ms(period_end("day", now)),
            week_start_ms=to_ms(period_start("week", now)),
            month_start_ms=to_ms(period_start("month", now)),
            day_expire_s=int((period_end("day", now) + grace).timestamp()),
            week_expire_s=int((period_end("week", now) + grace).timestamp()),
            month_expire_s=int((period_end("month", now) + grace).timestamp()),
        )

    @property
    def day(self) -> int:
        """Days since 1970-01-01: ARGV[1] of every period-keyed function (quota/lua/lib.lua
        derives the day's week and month from it)."""
        return self.day_start_ms // DAY_MS
