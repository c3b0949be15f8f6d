-- reserve: decide with open reservations counted, and on success hold `estimate`
-- tokens under a lease that ends by itself.
-- KEYS[1] = port hash (budget copy, held, next, alert)  KEYS[2..4] = usage day/week/month
-- KEYS[5] = open reservations (zset "<hex>:<tokens>" -> lease end)  KEYS[6] = the reservation
-- ARGV[1..7] = clock and expiry (see lib.lua)  ARGV[8] = estimate  ARGV[9] = lease ms
-- ARGV[10] = reservation hex id  ARGV[11] = feature  ARGV[12] = user id or ''
-- ARGV[13] = seconds a settled reservation is remembered
-- ARGV[14] = ms the open set lives past a write (twice the longest lease allowed: a
--   set is renewed at least once per lease, so it never expires under a live lease)
-- returns {ok, reason, used, reserved (incl. this hold), enabled, soft, hard, period, now_ms, 0}
--   or {-1} or {-2, now_ms}
local now = now_ms()
local bad = clock_guard(now)
if bad then
  return bad
end
local b = read_budget()
if not b then
  return {-1}
end
local reserved = purge_expired(b, KEYS[5], now, tonumber(ARGV[14]))
local used = used_in(b)
local estimate = tonumber(ARGV[8])
local ok, reason = decide(b, used, reserved, estimate)
if ok == 1 then
  local lease_end = now + tonumber(ARGV[9])
  local value = ARGV[8] .. '|' .. ARGV[11] .. '|' .. ARGV[12] .. '|open'
  if not redis.call('SET', KEYS[6], value, 'NX', 'PXAT',
                    lease_end + tonumber(ARGV[13]) * 1000) then
    -- A retried call (its reply was lost) finds its reservation: never hold twice.
    return decision_reply(1, '', used, reserved, b, now)
  end
  redis.call('ZADD', KEYS[5], lease_end, ARGV[10] .. ':' .. ARGV[8])
  reserved = redis.call('HINCRBY', KEYS[1], 'held', estimate)
  if b.next == 0 or lease_end < b.next then
    redis.call('HSET', KEYS[1], 'next', lease_end)
  end
  if b.next == 0 then
    -- A new open set. Its expiry is renewed by purge_expired whenever the earliest
    -- lease ends, so a busy set never reaches it.
    redis.call('PEXPIREAT', KEYS[5], now + tonumber(ARGV[14]))
  end
end
return decision_reply(ok, reason, used, reserved, b, now)
