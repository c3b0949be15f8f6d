-- snapshot: some ports' usage counters and the stream position they reflect, read in
-- one atomic step: every event up to that position is counted in them, none after.
-- KEYS and ARGV: quota/layouts.py (written into `$name` when the library is built)
-- returns {1, now_ms, last stream id ('' if the stream is missing), {field, value, ...}
--   for each usage key}, or {-2, now_ms} if the server is in another day
local now = now_ms()
if clock_guard(now) then
  return {-2, now}  -- a table, as this function's other reply is
end
local last = ''
if redis.call('EXISTS', KEYS[$stream]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[$stream])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      last = info[i + 1]
    end
  end
end
local out = {1, now, last}
for i = 2, #KEYS do
  out[#out + 1] = redis.call('HGETALL', KEYS[i])
end
return out
