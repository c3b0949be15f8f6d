"""The Lua function library's own logic: the calendar it derives from the client's
day must be quota/periods.py's, and the counters it creates must expire with it."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quota import Gate
from quota.periods import PERIODS, Windows, period_end, period_start
from quota.scripts import helpers

_LIB = helpers()
_EPOCH = date(1970, 1, 1)
# Every period_days(idx, day) for the days in ARGV, as {start, after} day numbers.
_PROBE = (
    _LIB
    + """
local out = {}
for _, d in ipairs(ARGV) do
  for idx = 1, 3 do
    local s, e = period_days(idx, tonumber(d))
    out[#out + 1] = {s, e}
  end
end
return out
"""
)


def _day(d: date) -> int:
    return (d - _EPOCH).days


# The connection fixture is stateless here: sharing it across examples is fine.
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.dates(date(1970, 1, 1), date(2400, 12, 31)), min_size=1, max_size=50))
def test_lua_calendar_matches_python(r: redis.Redis, days: list[date]) -> None:
    # Leap days, century years and month ends are where a calendar goes wrong.
    days += [date(2000, 2, 29), date(2100, 2, 28), date(2100, 3, 1), date(2026, 12, 31)]
    reply = r.eval(_PROBE, 0, *(_day(d) for d in days))
    got = iter(reply)
    for d in days:
        now = datetime(d.year, d.month, d.day, 12, tzinfo=UTC)
        for period in PERIODS:
            start, after = next(got)
            assert _EPOCH + timedelta(days=start) == period_start(period, now).date(), (d, period)
            assert _EPOCH + timedelta(days=after) == period_end(period, now).date(), (d, period)


def test_new_counters_expire_a_day_after_their_period(gate: Gate, r: redis.Redis) -> None:
    gate.record(port_id="p", feature="f", provider="x", model="y", input_tokens=3, output_tokens=0)
    w = Windows.at(datetime.now(UTC))
    pk = gate.layout.for_port("p")
    expected = (w.day_expire_s, w.week_expire_s, w.month_expire_s)
    assert tuple(r.expiretime(key) for key in pk.usage_all(w)) == expected


# parse_cfg over ARGV[1] distinct budget copies, each checked, then one more.
_CFG_PROBE = (
    _LIB
    + """
for i = 1, tonumber(ARGV[1]) do
  local b = parse_cfg('1|' .. i .. '|' .. (2 * i) .. '|week')
  if not b.on or b.soft ~= i or b.hard ~= 2 * i or b.period ~= 'week' or b.idx ~= 2 then
    return {'wrong', i}
  end
end
local b = parse_cfg('0|5|10|month')
local plain = {cfg_count, cfg_misses, CFG_LIMIT, b.on and 1 or 0, b.soft, b.hard, b.idx}
-- B is shared: the plain copy's fields are read above, before it is refilled.
local x = parse_cfg('1|7|9|day|q:60:600,t:1:50:80|ocr=5,a.b/c=6')
local L, C = x.limits, x.caps
return {plain[1], plain[2], plain[3], plain[4], plain[5], plain[6], plain[7],
        {x.soft, x.hard, x.idx, #L, L[1][1] and 1 or 0, L[1][2], L[1][3], L[1][4],
         L[2][1] and 1 or 0, L[2][2], L[2][3], L[2][4], C['ocr'][1], C['ocr'][2], C['ocr'][3],
         C['a.b/c'][1], C['a.b/c'][2], x.xfmt, x.xlen}}
"""
)


def test_budget_copies_parse_right_and_the_memo_stays_bounded(r: redis.Redis) -> None:
    limit = r.eval(_CFG_PROBE, 0, 0)[2]
    # Full: further copies are parsed, not kept (and their soft cap only when asked).
    count, misses, _, on, soft, hard, idx, extended = r.eval(_CFG_PROBE, 0, limit + 10)
    assert (count, misses) == (limit, 11)
    assert (on, soft, hard, idx) == (0, 5, 10, 3)
    # A copy with rate limits and feature caps (quota/ratelimits.py's text), parsed
    # whether or not the memo keeps it: 600 requests a minute cost 100 a request and
    # drain 1 a ms into 60,000; 50 tokens a second with a bucket of 80, 20 and 1 into
    # 1,600. Each capped feature: its cap, its hold's place in the state, its usage field.
    assert extended == [
        7, 9, 1, 2, 1, 100, 1, 60_000, 0, 20, 1, 1_600, 5, 4, "f:ocr", 6, 5, "<ddddd", 5,
    ]  # fmt: skip
    # After many misses it starts again.
    count, misses, *_ = r.eval(_CFG_PROBE, 0, 17 * limit)
    assert count < limit
    assert misses < 16 * limit
