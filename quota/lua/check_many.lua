-- check_many: the seed's decision for many ports of one shard in one call; changes
-- nothing. Port i owns KEYS[5i-4 .. 5i]: port hash, usage day/week/month, open set.
-- ARGV[1] = the client's day (see lib.lua)  ARGV[1 + i] = port i's estimate
-- returns '-2|<now ms>' if the server is in another day, else a list with one reply
-- per port: a decision reply (lib.lua) or '-1' (budget copy missing). A flat list of
-- strings: Redis converts each nested table at the cost of a small command.
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
    out[i] = '-1'
  else
    local used, used_s = used_in(b, nil, base + 1)
    local ok, reason = decide(b, used, 0, ARGV[1 + i] + 0)
    local held_s = live_held(b, KEYS[base + 1], KEYS[base + 5], now)
    out[i] = decision(ok, reason, used_s, held_s, '', b.cfg)
  end
end
return out
