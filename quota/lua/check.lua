-- check: the seed's decision for `estimate` tokens; changes nothing.
-- KEYS[1] = port hash (budget copy, held, next, alert)  KEYS[2..4] = usage day/week/month
-- KEYS[5] = open reservations (zset)
-- ARGV[1..7] = clock and expiry (see lib.lua)  ARGV[8] = estimate
-- ARGV[9] = feature whose usage to report, or '' for none
-- returns {ok, reason, used, reserved, enabled, soft, hard, period, now_ms, feature_used}
--   or {-1} (budget copy missing) or {-2, now_ms} (clock outside the client's day)
local now = now_ms()
local bad = clock_guard(now)
if bad then
  return bad
end
local b = read_budget()
if not b then
  return {-1}
end
local used = used_in(b)
local ok, reason = decide(b, used, 0, tonumber(ARGV[8]))
local feature_used = 0
if ARGV[9] ~= '' then
  feature_used = used_in(b, ARGV[9])
end
return decision_reply(ok, reason, used, live_held(b, KEYS[5], now), b, now, feature_used)
