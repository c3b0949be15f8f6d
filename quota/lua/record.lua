-- record: count usage that had no reservation and append its event, in one step.
-- Idempotent by request id.
-- KEYS[1] = port hash (budget copy, held, next, alert)  KEYS[2..4] = usage day/week/month
-- KEYS[5] = shard stream  KEYS[6] = request-id marker (only when a request id is given)
-- ARGV[1..7] = clock and expiry (see lib.lua)  ARGV[8] = port  ARGV[9] = feature
-- ARGV[10] = provider  ARGV[11] = model  ARGV[12] = input tokens  ARGV[13] = output tokens
-- ARGV[14] = user id or ''  ARGV[15] = request id or ''  ARGV[16] = event id
-- ARGV[17] = request-id marker ttl s
-- ARGV[18] = '1' to count even when the budget copy is missing (Postgres is down)
-- returns {code, used (-1 if unknown), soft_alert, now_ms, 0[, soft cap, period]}
--   code 1 counted, 2 duplicate request id (nothing counted); or {-1} or {-2, now_ms}
local now = now_ms()
local bad = clock_guard(now)
if bad then
  return bad
end
local b = read_budget()
if not b and ARGV[18] ~= '1' then
  return {-1}
end
if KEYS[6] and not redis.call('SET', KEYS[6], ARGV[16], 'NX', 'EX', ARGV[17]) then
  return {2, -1, 0, now, 0}
end
local used = add_usage(ARGV[9], tonumber(ARGV[12]) + tonumber(ARGV[13]), b)
append_event(KEYS[5], ARGV[16], ARGV[8], ARGV[14], ARGV[9], ARGV[10], ARGV[11],
             ARGV[12], ARGV[13], ARGV[15], now)
if not b then
  return {1, -1, 0, now, 0}
end
return {1, used, soft_alert(b, used), now, 0, b.soft, b.period}
