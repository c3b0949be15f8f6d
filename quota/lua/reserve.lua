-- reserve: decide with open reservations counted, and on success hold `estimate`
-- tokens under a lease that ends by itself.
-- KEYS[1] = port hash (budget copy, held, alert)  KEYS[2..4] = usage day/week/month
-- KEYS[5] = open reservations (zset)  KEYS[6] = the new reservation (hash)
-- ARGV[1..7] = clock and expiry (see lib.lua)  ARGV[8] = estimate  ARGV[9] = lease ms
-- ARGV[10] = reservation hex id  ARGV[11] = feature  ARGV[12] = user id or ''
-- ARGV[13] = seconds a settled reservation is remembered
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
local reserved = purge_expired(b, KEYS[5], now)
local used = used_in(b)
if redis.call('EXISTS', KEYS[6]) == 1 then
  -- A retried call (the reply was lost): the hold exists already, do not add it twice.
  return decision_reply(1, '', used, reserved, b, now)
end
local estimate = tonumber(ARGV[8])
local ok, reason = decide(b, used, reserved, estimate)
if ok == 1 then
  local lease_end = now + tonumber(ARGV[9])
  redis.call('ZADD', KEYS[5], lease_end, ARGV[10] .. ':' .. ARGV[8])
  reserved = redis.call('HINCRBY', KEYS[1], 'held', estimate)
  redis.call('HSET', KEYS[6], 'tokens', ARGV[8], 'feature', ARGV[11], 'user', ARGV[12],
             'state', 'open', 'lease', lease_end)
  redis.call('PEXPIREAT', KEYS[6], lease_end + tonumber(ARGV[13]) * 1000)
  -- The open set lives as long as its longest lease; `held` is void once it is gone.
  local last = redis.call('ZRANGE', KEYS[5], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[5], tonumber(last[2]) + 1000)
end
return decision_reply(ok, reason, used, reserved, b, now)
