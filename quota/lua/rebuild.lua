-- rebuild: raise a port's usage counters to at least the ledger's sums, never lower
-- them. The gate runs it, before it writes the budget copy, for a port whose copy was
-- missing: Redis lost the port (restart without persistence, flush, eviction), and
-- deciding from empty counters would let it spend its cap again.
-- KEYS and ARGV: quota/layouts.py (written into `$name` when the library is built)
-- returns the number of fields raised
local a = 1
local raised = 0
for i = 1, #KEYS do
  local expire_at, m = ARGV[a], tonumber(ARGV[a + 1])
  a = a + 2
  for _ = 1, m do
    local want = tonumber(ARGV[a + 1])
    local have = tonumber(redis.call('HGET', KEYS[i], ARGV[a]) or '0')
    if want > have then
      redis.call('HINCRBY', KEYS[i], ARGV[a], want - have)
      raised = raised + 1
    end
    a = a + 2
  end
  if m > 0 then
    redis.call('EXPIREAT', KEYS[i], expire_at)
  end
end
return raised
