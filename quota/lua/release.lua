-- release: return a reservation's hold without counting usage. Idempotent.
-- KEYS[1] = port hash (held)  KEYS[2] = open reservations (zset)  KEYS[3] = the reservation
-- ARGV[1] = reservation hex id  ARGV[2] = seconds a settled reservation is remembered
-- returns '1' released, '2' already settled (no-op), '-3' unknown reservation
local value = redis.call('GET', KEYS[3])
if not value then
  return '-3'
end
local tokens, feature, user, state = parse_reservation(value)
if state ~= 'open' then
  return '2'
end
return_hold(KEYS[2], ARGV[1], tokens)
settle_reservation(KEYS[3], tokens, feature, user, 'released', ARGV[2])
return '1'
