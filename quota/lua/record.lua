-- record: count usage that had no reservation and append its event, in one step.
-- Idempotent by request id.
-- KEYS[1] = port hash  KEYS[2..4] = usage day/week/month  KEYS[5] = shard stream
-- KEYS[6] = request-id marker (only when a request id is given)
-- ARGV[1] = the client's day (see lib.lua)  ARGV[2] = feature  ARGV[3] = total tokens
-- ARGV[4] = the event: "id|port|user|feature|provider|model|in|out|req"
-- ARGV[5] = '1' to count even when the budget copy is missing (Postgres is down)
-- ARGV[6] = request-id marker ttl s (only with KEYS[6]: each argument costs)
-- returns a usage reply (lib.lua): code 1 counted, 2 duplicate request id (nothing
--   counted); or '-1' or '-2|<now ms>'
local b = read_cfg()
if not b and ARGV[5] ~= '1' then
  return '-1'
end
if KEYS[6] and not redis.call('SET', KEYS[6], '1', 'NX', 'EX', ARGV[6]) then
  return usage_reply('2', -1, '0', '0')
end
-- Nothing is counted before the event: its id's time decides the period (lib.lua).
local id, now = append_event(KEYS[5], ARGV[4])
local bad = clock_guard(now)
if bad then
  redis.call('XDEL', KEYS[5], id)
  if KEYS[6] then
    redis.call('DEL', KEYS[6])  -- set above by this call: the retry must find it free
  end
  return bad
end
local used = add_usage(ARGV[2], ARGV[3], ARGV[3] + 0, b)
if soft_alert(b, used) then
  return usage_reply('1', used, '1', '0', b.cfg)
end
return usage_reply('1', used, '0', '0')
