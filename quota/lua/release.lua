-- release: return a reservation's hold without counting usage. Idempotent.
-- KEYS[1] = port hash (budget copy, held, alert)  KEYS[2] = open reservations (zset)  KEYS[3] = the reservation
-- ARGV[1] = reservation hex id  ARGV[2] = seconds a settled reservation is remembered
-- returns {1} released, {2} already settled (no-op), {-3} unknown reservation
local r = redis.call('HMGET', KEYS[3], 'tokens', 'state')
if not r[1] then
  return {-3}
end
if r[2] ~= 'open' then
  return {2}
end
if redis.call('ZREM', KEYS[2], ARGV[1] .. ':' .. r[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'held', -tonumber(r[1]))
end
redis.call('HSET', KEYS[3], 'state', 'released')
redis.call('EXPIRE', KEYS[3], ARGV[2])
return {1}
