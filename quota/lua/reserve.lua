-- reserve: decide with open reservations counted, and on success hold `estimate`
-- tokens under a lease that ends by itself. The hold is one member of the open set;
-- the rest of the reservation travels in its id (quota/reservations.py).
-- KEYS and ARGV: quota/layouts.py (written into `$name` when the library is built)
-- returns a decision reply (lib.lua) whose reserved field leaves this hold out (the
-- client adds it when ok), or '-1' (budget copy missing) or '-2|<now ms>'
local now = now_ms()
local bad = clock_guard(now)
if bad then
  return bad
end
local b = read_budget(KEYS[$port], true)
if not b then
  return '-1'
end
local held = purge_expired(b, KEYS[$open], KEYS[$lapsed], now, ARGV[$lapsed_ms])
local used, used_s = used_in(b)
local ok, reason = decide(b, used, held, ARGV[$estimate] + 0)
if ok == '1' then
  local lease_end = now + ARGV[$lease_ms]
  local lease_s = string.format('%d', lease_end)
  if redis.call('ZADD', KEYS[$open], 'NX', lease_s, ARGV[$member]) == 0 then
    -- A retried call (its reply was lost) finds its hold: never hold twice.
    return decision('1', '', used_s, string.format('%d', held - ARGV[$estimate]), '', b.cfg)
  end
  if held == 0 then
    -- Nothing else is held, so this lease ends first, and the open set may be new. Its
    -- expiry is renewed by purge_expired whenever the earliest lease ends, so a busy
    -- set never reaches it.
    redis.call('HSET', KEYS[$port], 'next', lease_s, 'held', ARGV[$estimate])
    redis.call('PEXPIREAT', KEYS[$open], string.format('%d', now + OPEN_SET_MS))
  else
    if lease_end < b.next then
      redis.call('HSET', KEYS[$port], 'next', lease_s)  -- a shorter lease than the others
    end
    redis.call('HINCRBY', KEYS[$port], 'held', ARGV[$estimate])
  end
end
return decision(ok, reason, used_s, b.held_s, '', b.cfg)
