-- commit: settle a reservation: return its hold and count the actual tokens (in
-- full, even above the estimate) in one step, append the usage event. Idempotent:
-- a settled reservation is a no-op.
-- KEYS[1] = port hash (budget copy, held, next, alert)  KEYS[2..4] = usage day/week/month
-- KEYS[5] = shard stream  KEYS[6] = open reservations (zset)  KEYS[7] = the reservation
-- KEYS[8] = request-id marker (only when a request id is given)
-- ARGV[1..7] = clock and expiry (see lib.lua)  ARGV[8] = port  ARGV[9] = reservation hex id
-- ARGV[10] = provider  ARGV[11] = model  ARGV[12] = input tokens  ARGV[13] = output tokens
-- ARGV[14] = request id or ''  ARGV[15] = event id  ARGV[16] = request-id marker ttl s
-- ARGV[17] = seconds a settled reservation is remembered
-- ARGV[18] = '1' to count even when the budget copy is missing (Postgres is down)
-- returns {code, used (-1 if unknown), soft_alert, now_ms, lease_expired[, soft cap, period]}
--   code 1 counted, 2 no-op (already settled, or request id already counted)
--   or {-1} or {-2, now_ms} or {-3} (unknown reservation)
local now = now_ms()
local bad = clock_guard(now)
if bad then
  return bad
end
local value = redis.call('GET', KEYS[7])
if not value then
  return {-3}
end
local tokens, feature, user, state = parse_reservation(value)
if state ~= 'open' then
  return {2, -1, 0, now, 0}
end
local b = read_budget()
if not b and ARGV[18] ~= '1' then
  return {-1}
end
if b then
  purge_expired(b, KEYS[6], now)
end
local lease_expired = 1
if redis.call('ZREM', KEYS[6], ARGV[9] .. ':' .. tokens) == 1 then
  redis.call('HINCRBY', KEYS[1], 'held', -tonumber(tokens))
  lease_expired = 0
end
settle_reservation(KEYS[7], tokens, feature, user, 'committed', ARGV[17])
if KEYS[8] and not redis.call('SET', KEYS[8], ARGV[15], 'NX', 'EX', ARGV[16]) then
  return {2, -1, 0, now, lease_expired}
end
local used = add_usage(feature, tonumber(ARGV[12]) + tonumber(ARGV[13]), b)
append_event(KEYS[5], ARGV[15], ARGV[8], user, feature, ARGV[10], ARGV[11],
             ARGV[12], ARGV[13], ARGV[14], now)
if not b then
  return {1, -1, 0, now, lease_expired}
end
return {1, used, soft_alert(b, used), now, lease_expired, b.soft, b.period}
