-- check_many: the seed's decision for many ports of one shard in one call; changes
-- nothing. Port i owns KEYS[5i-4 .. 5i]: budget hash, usage day/week/month, open set.
-- ARGV[1..7] = clock and expiry (see lib.lua)  ARGV[7 + i] = port i's estimate
-- returns {-2, now_ms} if the server is in another day, else one reply per port:
--   {ok, reason, used, reserved, enabled, soft, hard, period} or {-1} (budget missing)
local now = now_ms()
local bad = clock_guard(now)
if bad then
  return bad
end
local out = {}
for i = 1, #KEYS / 5 do
  local base = 5 * (i - 1)
  local b = read_budget(KEYS[base + 1])
  if not b then
    out[i] = {-1}
  else
    local used = used_in(b, nil, base + 1)
    local reserved = live_held(b, KEYS[base + 5], now)
    local ok, reason = decide(b, used, 0, tonumber(ARGV[7 + i]))
    out[i] = {ok, reason, used, reserved, b.enabled, b.soft, b.hard, b.period}
  end
end
return out
