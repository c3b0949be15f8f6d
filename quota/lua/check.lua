-- check: the seed's decision for `estimate` tokens; changes nothing.
-- KEYS and ARGV: quota/layouts.py (written into `$name` when the library is built)
-- returns a decision reply (lib.lua), or '-1' (budget copy missing) or '-2|<now ms>'
local now = now_ms()
local bad = clock_guard(now)
if bad then
  return bad
end
local b = read_budget(KEYS[$port])
if not b then
  return '-1'
end
local used, used_s = used_in(b)
local estimate = ARGV[$estimate] + 0
local ok, reason = decide(b, used, 0, estimate)
local wait_s, state
if b.limits then
  ok, reason, wait_s, state = rate_check(b, KEYS[$port], ok, reason, estimate, now)
end
local feature_used = ''
if ARGV[$feature] ~= '' then
  local _
  _, feature_used = used_in(b, ARGV[$feature])
end
local held_s = live_held(b, KEYS[$port], KEYS[$open], now)
if state then
  return rate_decision(ok, reason, used_s, held_s, feature_used, wait_s, b.cfg, state)
end
return decision(ok, reason, used_s, held_s, feature_used, '', b.cfg)
