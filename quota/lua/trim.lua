-- trim: delete the stream entries every consumer has acknowledged, never a pending
-- or undelivered one: everything below min(first pending id, last delivered id + 1).
-- KEYS and ARGV: quota/layouts.py (written into `$name` when the library is built)
-- returns the number of entries deleted
if redis.call('EXISTS', KEYS[$stream]) == 0 then
  return 0
end
local last = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[$stream])) do
  local info = {}
  for i = 1, #g, 2 do
    info[g[i]] = g[i + 1]
  end
  if info['name'] == ARGV[$group] then
    last = info['last-delivered-id']
  end
end
if not last then
  return 0
end
local pending = redis.call('XPENDING', KEYS[$stream], ARGV[$group])
local minid
if pending[1] > 0 then
  minid = pending[2]
else
  -- Keep the ms part a string: Lua would print a 13-digit number in exponent form.
  local dash = string.find(last, '-', 1, true)
  minid = string.sub(last, 1, dash - 1) .. '-' .. (tonumber(string.sub(last, dash + 1)) + 1)
end
return redis.call('XTRIM', KEYS[$stream], 'MINID', minid)
