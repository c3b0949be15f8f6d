-- budget_put: store the Redis copy of a budget unless a newer version is there
-- already (a slow cache fill must not overwrite a fresher set_budget).
-- KEYS[1] = port hash
-- ARGV[1] = version  ARGV[2] = enabled (0/1)  ARGV[3] = soft cap  ARGV[4] = hard cap
-- ARGV[5] = period
-- The copy is one field, 'cfg' = "<enabled>|<soft>|<hard>|<period>": one HMGET field
-- for the scripts, passed on to the client as it is. It has no TTL: set_budget
-- overwrites it and reconciliation refreshes it, so the gate keeps deciding from it
-- while Postgres is down.
-- returns 1 stored, 0 skipped (a newer version is cached)
local cur = redis.call('HGET', KEYS[1], 'version')
if cur and tonumber(cur) > tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'version', ARGV[1],
           'cfg', ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4] .. '|' .. ARGV[5])
return 1
