-- commit: settle a reservation: return its hold and count the actual tokens (in
-- full, even above the estimate) in one step, append the usage event. Idempotent:
-- a settled reservation is a no-op.
-- KEYS[1] = port hash  KEYS[2..4] = usage day/week/month  KEYS[5] = shard stream
-- KEYS[6] = open reservations (zset)  KEYS[7] = lapsed reservations (zset)
-- KEYS[8] = the reservation's settled marker
-- KEYS[9] = request-id marker (only when a request id is given)
-- ARGV[1] = the client's day (see lib.lua)  ARGV[2] = its member, "<32 hex>:<tokens>"
-- ARGV[3] = total tokens  ARGV[4] = feature
-- ARGV[5] = the event: "id|port|user|feature|provider|model|in|out|req"
-- ARGV[6] = seconds a settled reservation is remembered
-- ARGV[7] = '1' to count even when the budget copy is missing (Postgres is down)
-- ARGV[8] = request-id marker ttl s (only with KEYS[9]: each argument costs)
-- returns a usage reply (lib.lua): code 1 counted, 2 no-op (already settled, or
--   request id already counted); or '-1' or '-2|<now ms>' or '-3' (unknown reservation)

-- The budget copy alone: the holds are not read. Another reservation's ended lease
-- is returned by the next reserve (check already leaves it out).
local b = read_cfg()
if not b and ARGV[7] ~= '1' then
  return '-1'
end
-- Nothing is written before the event: its id's time decides the period (lib.lua).
local id, now = append_event(KEYS[5], ARGV[5])
local bad = clock_guard(now)
if bad then
  redis.call('XDEL', KEYS[5], id)
  return bad
end
local lease_expired = settle(KEYS[6], KEYS[7], ARGV[2], KEYS[8], 'committed', ARGV[6])
if not lease_expired then
  redis.call('XDEL', KEYS[5], id)  -- nothing to count
  if redis.call('EXISTS', KEYS[8]) == 1 then
    return usage_reply('2', -1, '0', '0')
  end
  return '-3'
end
if KEYS[9] and not redis.call('SET', KEYS[9], '1', 'NX', 'EX', ARGV[8]) then
  redis.call('XDEL', KEYS[5], id)  -- the request id was counted before: not again
  return usage_reply('2', -1, '0', lease_expired)
end
local used = add_usage(ARGV[4], ARGV[3], ARGV[3] + 0, b)
if soft_alert(b, used) then
  return usage_reply('1', used, '1', lease_expired, b.cfg)
end
return usage_reply('1', used, '0', lease_expired)
