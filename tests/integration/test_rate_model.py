"""The rate limits' Lua (quota/lua/lib.lua) against their Python (quota/ratelimits.py):
random limits and random sequences of reserve, commit true-ups, give-backs (release,
lapsed leases) and records, at times the test chooses, must give identical decisions,
waits, headers' figures and stored buckets, as the calendar's two versions do."""

from __future__ import annotations

import uuid

import redis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from quota import InvalidBudget, RateLimit
from quota import ratelimits as rl
from quota.scripts import helpers

# Each op of ARGV[2..] is "<op>:<arg>:<now>" on the budget copy of ARGV[1]: r reserve
# (tokens), c commit's true-up (tokens, may be negative), g give back (tokens), d
# record (tokens). The buckets live in KEYS[1]'s 'rl' field, as in the port hash; the
# headroom a reply reports is worked out from them by the client (test_replies.py).
_PROBE = (
    helpers()
    + """
local b = parse_cfg(ARGV[1])
local out = {}
for i = 2, #ARGV do
  local op, arg, now = string.match(ARGV[i], '^(%a):(-?%d+):(%d+)$')
  arg, now = arg + 0, now + 0
  local state = redis.call('HGET', KEYS[1], 'rl')
  local why, wait = '', 0
  if op == 'g' then
    state = rate_give_back(b, state, arg)
    if state then
      redis.call('HSET', KEYS[1], 'rl', state)
    end
  elseif op == 'r' then
    local lv = rate_levels(b, state, now)
    why, wait = rate_admit(b, lv, arg)
    if not why then
      rate_add(b, lv, arg, 1)
      redis.call('HSET', KEYS[1], 'rl', rate_state(b, lv, now))
    end
    why = why or ''
  elseif op == 'c' then
    rate_count(b, now, arg, 0)
  else
    rate_count(b, now, arg, 1)
  end
  out[#out + 1] = {why, wait, redis.call('HGET', KEYS[1], 'rl') or ''}
end
return out
"""
)


def _model(limits: tuple[rl.Scaled, ...], ops: list[tuple[str, int, int]]) -> list[list[object]]:
    state: str | None = None
    out: list[list[object]] = []
    for op, arg, now in ops:
        why, wait = "", 0
        if op == "g":
            state = rl.give_back(limits, state, arg)
        else:
            lv = rl.levels(limits, state, now)
            if op == "r":
                reason, wait = rl.admit(limits, lv, arg)
                if reason is None:
                    rl.add(limits, lv, arg, 1)
                    state = rl.stored(lv, now)
                why = reason or ""
            else:
                rl.add(limits, lv, arg, 0 if op == "c" else 1)
                state = rl.stored(lv, now)
        out.append([why, wait, state or ""])
    return out


_limit = st.builds(
    lambda kind, n, s, burst: (kind, n, s, burst),
    st.sampled_from(["requests", "tokens"]),
    st.integers(1, 2_000_000),
    st.sampled_from([1, 2, 7, 60, 61, 3600, 86_400]),
    st.none() | st.integers(1, 4_000_000),
)
_op = st.tuples(
    st.sampled_from("rrrcgd"),
    st.integers(-5_000, 200_000),
    st.integers(-50, 3_000),  # ms since the last op (a server clock may step back)
)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(_limit, min_size=1, max_size=4, unique_by=lambda x: (x[0], x[2])),
    st.lists(_op, min_size=1, max_size=40),
)
def test_lua_buckets_match_the_python_model(
    r: redis.Redis,
    limits: list[tuple[str, int, int, int | None]],
    ops: list[tuple[str, int, int]],
) -> None:
    try:
        parsed = [
            RateLimit(**{kind: n}, per_seconds=s, burst=burst) for kind, n, s, burst in limits
        ]
    except InvalidBudget:
        assume(False)  # too fine-grained to count exactly: refused, tested elsewhere
        return
    scaled = rl.scaled(parsed)
    cfg = f"1|10|20|day|{rl.spec(parsed)}|"
    now, timed = 1_767_225_600_000, []
    for op, arg, dt in ops:
        now += dt
        timed.append((op, abs(arg) if op in "rdg" else arg, now))
    key = f"qt-ratemodel:{uuid.uuid4().hex}"
    try:
        got = r.eval(_PROBE, 1, key, cfg, *(f"{op}:{arg}:{t}" for op, arg, t in timed))
    finally:
        r.delete(key)
    assert [[w, int(n), s] for w, n, s in got] == _model(scaled, timed)
