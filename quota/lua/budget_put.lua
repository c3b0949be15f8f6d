-- budget_put: store the Redis copy of a budget unless a newer version is there
-- already (a slow cache fill must not overwrite a fresher set_budget).
-- KEYS and ARGV: quota/layouts.py (written into `$name` when the library is built)
-- The copy is one field, 'cfg' = "<enabled>|<soft>|<hard>|<period>", followed by
-- "|<rate limits>|<feature caps>" (quota/ratelimits.py) when it has either: one HMGET field
-- for the scripts, passed on to the client as it is. It has no TTL: set_budget
-- overwrites it and reconciliation refreshes it, so the gate keeps deciding from it
-- while Postgres is down. The rate limits' and feature holds' state 'x' is laid out by
-- the copy, so a new copy carries it over (lib.lua's x_carry).
-- returns 1 stored, 0 skipped (a newer version is cached)
local cur = redis.call('HGET', KEYS[$port], 'version')
if cur and tonumber(cur) > tonumber(ARGV[$version]) then
  return 0
end
local cfg = ARGV[$enabled] .. '|' .. ARGV[$soft] .. '|' .. ARGV[$hard] .. '|' .. ARGV[$period]
if ARGV[$limits] ~= '' or ARGV[$caps] ~= '' then
  cfg = cfg .. '|' .. ARGV[$limits] .. '|' .. ARGV[$caps]
end
local old = redis.call('HGET', KEYS[$port], 'cfg')
if old ~= cfg then
  local x = redis.call('HGET', KEYS[$port], 'x')
  x = x and old and x_carry(old, cfg, x)
  if x then
    redis.call('HSET', KEYS[$port], 'x', x)
  else
    redis.call('HDEL', KEYS[$port], 'x')
  end
end
redis.call('HSET', KEYS[$port], 'version', ARGV[$version], 'cfg', cfg)
return 1
