-- trim: delete the stream entries every consumer has acknowledged, never a pending
-- or undelivered one: everything below min(first pending id, last delivered id + 1).
-- KEYS[1] = shard stream
-- ARGV[1] = consumer group
-- returns the number of entries deleted
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local last = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #g, 2 do
    info[g[i]] = g[i + 1]
  end
  if info['name'] == ARGV[1] then
    last = info['last-delivered-id']
  end
end
if not last then
  return 0
end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1])
local minid
if pending[1] > 0 then
  minid = pending[2]
else
  -- Keep the ms part a string: Lua would print a 13-digit number in exponent form.
  local dash = string.find(last, '-', 1, true)
  minid = string.sub(last, 1, dash - 1) .. '-' .. (tonumber(string.sub(last, dash + 1)) + 1)
end
return redis.call('XTRIM', KEYS[1], 'MINID', minid)
