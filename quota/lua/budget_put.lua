-- budget_put: store the Redis copy of a budget unless a newer version is there
-- already (a slow cache fill must not overwrite a fresher set_budget).
-- KEYS and ARGV: quota/layouts.py (written into `$name` when the library is built)
-- The copy is one field, 'cfg' = "<enabled>|<soft>|<hard>|<period>", followed by
-- "|<rate limits>|<feature caps>" (quota/ratelimits.py) when it has either: one HMGET field
-- for the scripts, passed on to the client as it is. It has no TTL: set_budget
-- overwrites it and reconciliation refreshes it, so the gate keeps deciding from it
-- while Postgres is down.
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
if old and (string.match(old, '^%d|%d+|%d+|%a+|([^|]*)|') or '') ~= ARGV[$limits] then
  redis.call('HDEL', KEYS[$port], 'rl')  -- other limits: their buckets start empty
end
redis.call('HSET', KEYS[$port], 'version', ARGV[$version], 'cfg', cfg)
return 1
