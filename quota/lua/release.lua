-- release: return a reservation's hold without counting usage (its estimate goes back
-- to the token buckets; the request stays counted). Idempotent.
-- KEYS and ARGV: quota/layouts.py (written into `$name` when the library is built)
-- returns '1' released, '2' already settled (no-op), '-3' unknown reservation
local lapsed = settle(KEYS[$open], KEYS[$lapsed], ARGV[$member], ARGV[$feature], KEYS[$settled],
                     'released', ARGV[$settled_s])
if lapsed then
  local b = read_cfg()
  if lapsed == '0' and b and b.limits then  -- the estimate back to the token buckets
    local state = redis.call('HGET', KEYS[$port], 'rl')
    if state then
      redis.call('HSET', KEYS[$port], 'rl',
                 rate_give_back(b, state, member_tokens(ARGV[$member]) + 0))
    end
  end
  return '1'
end
if redis.call('EXISTS', KEYS[$settled]) == 1 then
  return '2'
end
return '-3'
