-- record: count usage that had no reservation and append its event, in one step.
-- Idempotent by request id.
-- KEYS and ARGV: quota/layouts.py (written into `$name` when the library is built)
-- returns a usage reply (lib.lua): code 1 counted, 2 duplicate request id (nothing
--   counted); or '-1' or '-2|<now ms>'
local b = read_cfg()
if not b and ARGV[$unbudgeted] ~= '1' then
  return '-1'
end
if KEYS[$request] and not redis.call('SET', KEYS[$request], '1', 'NX', 'EX', ARGV[$request_s]) then
  return usage_reply('2', -1, '0', '0')
end
-- Nothing is counted before the event: its id's time decides the period (lib.lua).
local id, now = append_event(KEYS[$stream], ARGV[$event])
local bad = clock_guard(now)
if bad then
  redis.call('XDEL', KEYS[$stream], id)
  if KEYS[$request] then
    redis.call('DEL', KEYS[$request])  -- set above by this call: the retry must find it free
  end
  return bad
end
local used = add_usage(ARGV[$feature], ARGV[$total], ARGV[$total] + 0, b)
if b and b.limits then  -- counted after the fact: one request and its tokens, debt or not
  rate_count(b, now, ARGV[$total] + 0, 1)
end
if soft_alert(b, used) then
  return usage_reply('1', used, '1', '0', b.cfg)
end
return usage_reply('1', used, '0', '0')
