-- check: the seed's decision for `estimate` tokens; changes nothing.
-- KEYS[1] = port hash  KEYS[2..4] = usage day/week/month  KEYS[5] = open reservations
-- ARGV[1] = the client's day (see lib.lua)  ARGV[2] = estimate
-- ARGV[3] = feature whose usage to report, or '' for none
-- returns a decision reply (lib.lua), or '-1' (budget copy missing) or '-2|<now ms>'
local now = now_ms()
local bad = clock_guard(now)
if bad then
  return bad
end
local b = read_budget(KEYS[1])
if not b then
  return '-1'
end
local used, used_s = used_in(b)
local ok, reason = decide(b, used, 0, ARGV[2] + 0)
local feature_used = ''
if ARGV[3] ~= '' then
  local _
  _, feature_used = used_in(b, ARGV[3])
end
local held_s = live_held(b, KEYS[1], KEYS[5], now)
return decision(ok, reason, used_s, held_s, feature_used, b.cfg)
