-- release: return a reservation's hold without counting usage. Idempotent.
-- KEYS and ARGV: quota/layouts.py (written into `$name` when the library is built)
-- returns '1' released, '2' already settled (no-op), '-3' unknown reservation
if settle(KEYS[$open], KEYS[$lapsed], ARGV[$member], KEYS[$settled], 'released', ARGV[$settled_s]) then
  return '1'
end
if redis.call('EXISTS', KEYS[$settled]) == 1 then
  return '2'
end
return '-3'
