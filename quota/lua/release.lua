-- release: return a reservation's hold without counting usage. Idempotent.
-- KEYS[1] = port hash (held)  KEYS[2] = open reservations (zset)
-- KEYS[3] = lapsed reservations (zset)
-- KEYS[4], KEYS[5] = the port's settled reservations, this time bucket's and the last's
-- ARGV[1] = its member, "<32 hex>:<tokens>"
-- ARGV[2] = when a new bucket of settled reservations expires (unix s)
-- returns '1' released, '2' already settled (no-op), '-3' unknown reservation
if settle(KEYS[2], KEYS[3], ARGV[1], KEYS[4], 'r', ARGV[2]) then
  return '1'
end
if was_settled(ARGV[1], KEYS[4], KEYS[5]) then
  return '2'
end
return '-3'
