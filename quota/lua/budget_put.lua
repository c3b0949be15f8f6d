-- budget_put: store the Redis copy of a budget unless a newer version is there
-- already (a slow cache fill must not overwrite a fresher set_budget).
-- KEYS and ARGV: quota/layouts.py (written into `$name` when the library is built)
-- The copy is one field, 'cfg' = "<enabled>|<soft>|<hard>|<period>": one HMGET field
-- for the scripts, passed on to the client as it is. It has no TTL: set_budget
-- overwrites it and reconciliation refreshes it, so the gate keeps deciding from it
-- while Postgres is down.
-- returns 1 stored, 0 skipped (a newer version is cached)
local cur = redis.call('HGET', KEYS[$port], 'version')
if cur and tonumber(cur) > tonumber(ARGV[$version]) then
  return 0
end
redis.call('HSET', KEYS[$port], 'version', ARGV[$version],
           'cfg', ARGV[$enabled] .. '|' .. ARGV[$soft] .. '|' .. ARGV[$hard] .. '|' .. ARGV[$period])
return 1
