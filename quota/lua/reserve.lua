-- reserve: decide with open reservations counted, and on success hold `estimate`
-- tokens under a lease that ends by itself. The hold is one member of the open set;
-- the rest of the reservation travels in its id (quota/reservations.py).
-- KEYS[1] = port hash  KEYS[2..4] = usage day/week/month
-- KEYS[5] = open reservations (zset "<32 hex>:<tokens>" -> lease end)
-- KEYS[6] = lapsed reservations (zset, the same members -> when forgotten)
-- ARGV[1] = the client's day (see lib.lua)  ARGV[2] = estimate  ARGV[3] = lease ms
-- ARGV[4] = its member, "<32 hex>:<estimate>"
-- ARGV[5] = ms a reservation whose lease ended is remembered (as a settled one is)
-- returns a decision reply (lib.lua) whose reserved field leaves this hold out (the
-- client adds it when ok), or '-1' (budget copy missing) or '-2|<now ms>'
local now = now_ms()
local bad = clock_guard(now)
if bad then
  return bad
end
local b = read_budget(KEYS[1], true)
if not b then
  return '-1'
end
local held = purge_expired(b, KEYS[5], KEYS[6], now, ARGV[5])
local used, used_s = used_in(b)
local ok, reason = decide(b, used, held, ARGV[2] + 0)
if ok == '1' then
  local lease_end = now + ARGV[3]
  local lease_s = string.format('%d', lease_end)
  if redis.call('ZADD', KEYS[5], 'NX', lease_s, ARGV[4]) == 0 then
    -- A retried call (its reply was lost) finds its hold: never hold twice.
    return decision('1', '', used_s, string.format('%d', held - ARGV[2]), '', b.cfg)
  end
  if held == 0 then
    -- Nothing else is held, so this lease ends first, and the open set may be new. Its
    -- expiry is renewed by purge_expired whenever the earliest lease ends, so a busy
    -- set never reaches it.
    redis.call('HSET', KEYS[1], 'next', lease_s, 'held', ARGV[2])
    redis.call('PEXPIREAT', KEYS[5], string.format('%d', now + OPEN_SET_MS))
  else
    if lease_end < b.next then
      redis.call('HSET', KEYS[1], 'next', lease_s)  -- a shorter lease than the others
    end
    redis.call('HINCRBY', KEYS[1], 'held', ARGV[2])
  end
end
return decision(ok, reason, used_s, b.held_s, '', b.cfg)
