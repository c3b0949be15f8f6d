-- adjust: add reconciliation corrections to usage counters, in one atomic step.
-- Increments (not overwrites) keep every event counted since the snapshot.
-- KEYS and ARGV: quota/layouts.py (written into `$name` when the library is built)
-- returns the number of fields changed
local a = 1
local changed = 0
for i = 1, #KEYS do
  local expire_at, m = ARGV[a], tonumber(ARGV[a + 1])
  a = a + 2
  for _ = 1, m do
    redis.call('HINCRBY', KEYS[i], ARGV[a], ARGV[a + 1])
    a = a + 2
    changed = changed + 1
  end
  redis.call('EXPIREAT', KEYS[i], expire_at)
end
return changed
