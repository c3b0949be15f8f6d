-- release: return a reservation's hold without counting usage. Idempotent.
-- KEYS[1] = port hash (held)  KEYS[2] = open reservations (zset)
-- KEYS[3] = lapsed reservations (zset)  KEYS[4] = the reservation's settled marker
-- ARGV[1] = its member, "<32 hex>:<tokens>"  ARGV[2] = seconds a settled reservation
--   is remembered
-- returns '1' released, '2' already settled (no-op), '-3' unknown reservation
if settle(KEYS[2], KEYS[3], ARGV[1], KEYS[4], 'released', ARGV[2]) then
  return '1'
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  return '2'
end
return '-3'
