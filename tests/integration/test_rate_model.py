"""The rate limits' Lua (quota/lua/rates.lua) against their Python (quota/ratelimits.py):
random limits and random sequences of reserve, commit true-ups, give-backs (release,
lapsed leases) and records, at times the test chooses, must give identical decisions,
waits, headers' figures and stored buckets, as the calendar's two versions do."""

from __future__ import annotations

import uuid
from typing import cast

import redis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from quota import InvalidBudget, RateLimit, Settings
from quota import ratelimits as rl
from quota.scripts import helpers
from quota.topology import sync_client

# Each op of ARGV[2..] is "<op>:<arg>:<now>" on the budget copy of ARGV[1]: r reserve
# (tokens; counted if admitted), k check (tokens; counts nothing), u a retried reserve
# (counted, then taken back), c commit's true-up (tokens, may be negative), g give back
# (tokens), d record (tokens). The state lives in KEYS[1]'s 'x' field, as in the port
# hash; the headroom a reply reports is worked out from it by the client
# (test_replies.py).
_PROBE = (
    helpers()
    + """
local b = parse_cfg(ARGV[1])
local out = {}
for i = 2, #ARGV do
  local op, arg, now = string.match(ARGV[i], '^(%a):(-?%d+):(%d+)$')
  arg, now = arg + 0, now + 0
  local v = x_read(b, redis.call('HGET', KEYS[1], 'x'))
  local why, wait = '', 0
  if op == 'g' then
    rate_give_back(b, v, arg)
    redis.call('HSET', KEYS[1], 'x', x_pack(b, v))
  elseif op == 'r' or op == 'k' or op == 'u' then
    why, wait = rate_take(b.limits, v, now, arg, op ~= 'k')
    if op == 'u' and not why then
      rate_untake(b.limits, v)
    end
    if op ~= 'k' then
      redis.call('HSET', KEYS[1], 'x', x_pack(b, v))
    end
    why = why or ''
  elseif op == 'c' then
    rate_count(b, now, arg, 0)
  else
    rate_count(b, now, arg, 1)
  end
  out[#out + 1] = {why, wait, redis.call('HGET', KEYS[1], 'x') or ''}
end
return out
"""
)


def _model(limits: tuple[rl.Scaled, ...], ops: list[tuple[str, int, int]]) -> list[list[object]]:
    stored = b""
    out: list[list[object]] = []
    for op, arg, now in ops:
        v = rl.unpack_state(stored) if stored else [0] * (1 + len(limits))
        why, wait = "", 0
        if op == "g":
            rl.give_back(limits, v, arg)
        else:
            rl.drain(limits, v, now)
            if op in "rku":
                reason, wait = rl.admit(limits, v, arg)
                if reason is None and op == "r":
                    rl.add(limits, v, arg, 1)
                why = reason or ""
            else:
                rl.add(limits, v, arg, 0 if op == "c" else 1)
        if op != "k":
            stored = rl.pack_state(v)
        out.append([why, wait, stored])
    return out


_limit = st.builds(
    lambda kind, n, s, burst: (kind, n, s, burst),
    st.sampled_from(["requests", "tokens"]),
    st.integers(1, 2_000_000),
    st.sampled_from([1, 2, 7, 60, 61, 3600, 86_400]),
    st.none() | st.integers(1, 4_000_000),
)
_op = st.tuples(
    st.sampled_from("rrrkucgd"),
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
    settings: Settings,
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
    assert rl.parse_spec(rl.spec(parsed)) == scaled  # the client reads replies' copies
    cfg = f"1|10|20|day|{rl.spec(parsed)}|"
    now, timed = 1_767_225_600_000, []
    for op, arg, dt in ops:
        now += dt
        timed.append((op, abs(arg) if op in "rkudg" else arg, now))
    key = f"qt-ratemodel:{uuid.uuid4().hex}"
    raw = cast(redis.Redis, sync_client(settings.redis_url))  # the state is binary
    try:
        got = raw.eval(_PROBE, 1, key, cfg, *(f"{op}:{arg}:{t}" for op, arg, t in timed))
    finally:
        raw.delete(key)
        raw.close()
    assert [[w.decode(), int(n), s] for w, n, s in got] == _model(scaled, timed)
