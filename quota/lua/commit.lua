-- commit: settle a reservation: return its hold and count the actual tokens (in
-- full, even above the estimate) in one step, append the usage event. Idempotent:
-- a settled reservation is a no-op.
-- KEYS and ARGV: quota/layouts.py (written into `$name` when the library is built)
-- returns a usage reply (lib.lua): code 1 counted, 2 no-op (already settled, or
--   request id already counted); or '-1' or '-2|<now ms>' or '-3' (unknown reservation)

-- The budget copy alone: the holds are not read. Another reservation's ended lease
-- is returned by the next reserve (check already leaves it out).
local b = read_cfg()
if not b and ARGV[$unbudgeted] ~= '1' then
  return '-1'
end
-- Nothing is written before the event: its id's time decides the period (lib.lua).
local id, now = append_event(KEYS[$stream], ARGV[$event])
local bad = clock_guard(now)
if bad then
  redis.call('XDEL', KEYS[$stream], id)
  return bad
end
local lease_expired, featured = settle(KEYS[$open], KEYS[$lapsed], ARGV[$member],
                                       ARGV[$feature], KEYS[$settled], 'committed',
                                       ARGV[$settled_s])
-- The rate limits' true-up and the feature's hold (x_settle), if the port has either.
local in_x = b and (b.limits or featured and b.caps)
if not lease_expired then
  redis.call('XDEL', KEYS[$stream], id)  -- nothing to count
  if redis.call('EXISTS', KEYS[$settled]) == 1 then
    return usage_reply('2', -1, '0', '0')
  end
  return '-3'
end
if KEYS[$request] and not redis.call('SET', KEYS[$request], '1', 'NX', 'EX', ARGV[$request_s]) then
  redis.call('XDEL', KEYS[$stream], id)  -- the request id was counted before: not again
  if in_x then
    x_settle(b, now, ARGV[$member], lease_expired, featured, ARGV[$feature], 0)
  end
  return usage_reply('2', -1, '0', lease_expired)
end
local used = add_usage(ARGV[$feature], ARGV[$total], ARGV[$total] + 0, b)
if in_x then  -- the difference from the estimate, into debt or back
  x_settle(b, now, ARGV[$member], lease_expired, featured, ARGV[$feature], ARGV[$total] + 0)
end
if soft_alert(b, used) then
  return usage_reply('1', used, '1', lease_expired, b.cfg)
end
return usage_reply('1', used, '0', lease_expired)
