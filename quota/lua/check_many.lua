-- check_many: the seed's decision for many ports of one shard in one call; changes
-- nothing. Port i owns the i-th group of keys (its period keys, then its open set).
-- KEYS and ARGV: quota/layouts.py (written into `$name` when the library is built)
-- returns '-2|<now ms>' if the server is in another day, else a list with one reply
-- per port: a decision reply (lib.lua) or '-1' (budget copy missing). A flat list of
-- strings: Redis converts each nested table at the cost of a small command.
local now = now_ms()
local bad = clock_guard(now)
if bad then
  return bad
end
local out = {}
for i = 1, #KEYS / $per_port_keys do
  local base = $per_port_keys * (i - 1)
  local b = read_budget(KEYS[base + $port])
  if not b then
    out[i] = '-1'
  else
    local used, used_s = used_in(b, nil, base + $port)
    local estimate = ARGV[$args_before_ports + (i - 1) * $per_port_argc + $estimate]
    local ok, reason = decide(b, used, 0, estimate + 0)
    local held_s = live_held(b, KEYS[base + $port], KEYS[base + $open], now)
    if b.limits then
      local wait_s, state
      ok, reason, wait_s, state = rate_check(b, KEYS[base + $port], ok, reason, estimate + 0,
                                             now)
      out[i] = rate_decision(ok, reason, used_s, held_s, '', wait_s, b.cfg, state)
    else
      out[i] = decision(ok, reason, used_s, held_s, '', '', b.cfg)
    end
  end
end
return out
