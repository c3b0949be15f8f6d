-- release: return a reservation's hold without counting usage (its estimate goes back
-- to the token buckets; the request stays counted). Idempotent.
-- KEYS and ARGV: quota/layouts.py (written into `$name` when the library is built)
-- returns '1' released, '2' already settled (no-op), '-3' unknown reservation
local lapsed, featured = settle(KEYS[$open], KEYS[$lapsed], ARGV[$member], ARGV[$feature],
                               KEYS[$settled], 'released', ARGV[$settled_s])
if lapsed then
  local b = lapsed == '0' and read_cfg()
  if b and (b.limits or featured and b.caps) then  -- the estimate back, the feature's hold
    x_settle(b, nil, ARGV[$member], lapsed, featured, ARGV[$feature], nil)
  end
  return '1'
end
if redis.call('EXISTS', KEYS[$settled]) == 1 then
  return '2'
end
return '-3'
