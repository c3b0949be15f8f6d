-- Shared helpers, prepended to every operation script when it is registered
-- (quota/scripts.py), so each operation stays one EVALSHA. Only local functions;
-- they touch the operation's KEYS and nothing else.
--
-- Conventions shared by check, reserve, commit and record:
--   KEYS[1] = the port hash: budget copy (version, enabled, soft, hard, period) and
--             state (held: tokens of open reservations; alert: last soft-alert period)
--   KEYS[2..4] = usage day/week/month (hash: t = total, f:<feature>)
--   ARGV[1] = day start ms  ARGV[2] = day end ms  ARGV[3] = week start ms
--   ARGV[4] = month start ms  ARGV[5..7] = EXPIREAT seconds for day/week/month
-- Reply codes (first element): 1 done/ok, 0 refused, 2 no-op (duplicate or settled),
--   -1 budget copy missing (client loads it and retries), -2 server clock outside
--   the client's day (second element: server ms; client retries), -3 unknown reservation.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The client named the period keys from its own clock; the server's clock decides.
-- A day lies inside one week and one month, so checking the day is enough.
local function clock_guard(now)
  if now < tonumber(ARGV[1]) or now >= tonumber(ARGV[2]) then
    return {-2, now}
  end
  return nil
end

local PERIOD_INDEX = {day = 1, week = 2, month = 3}

-- The port hash in one call: budget copy, held tokens, the earliest lease end of the
-- open reservations ("next"), and the last soft-alert marker. nil if the copy is missing.
-- `key` defaults to KEYS[1] (check_many passes each port's).
local function read_budget(key)
  local b = redis.call('HMGET', key or KEYS[1], 'enabled', 'soft', 'hard', 'period', 'held',
                       'next', 'alert')
  if not b[1] then
    return nil
  end
  return {enabled = tonumber(b[1]), soft = tonumber(b[2]), hard = tonumber(b[3]),
          period = b[4], idx = PERIOD_INDEX[b[4]], held = tonumber(b[5] or '0'),
          next = tonumber(b[6] or '0'), alert = b[7]}
end

-- Tokens used in the budget's own period (all three are always counted). The usage
-- keys are KEYS[base + 1 .. base + 3] (base 1 unless check_many says otherwise).
local function used_in(b, feature, base)
  local field = 't'
  if feature then
    field = 'f:' .. feature
  end
  return tonumber(redis.call('HGET', KEYS[(base or 1) + b.idx], field) or '0')
end

-- Sum of the open-set members whose lease ended (member = "<hex>:<tokens>"), bounded.
local function expired(open_key, now)
  local gone = redis.call('ZRANGEBYSCORE', open_key, '-inf', now, 'LIMIT', 0, 256)
  local freed = 0
  for i = 1, #gone do
    local m = gone[i]
    freed = freed + tonumber(string.sub(m, string.find(m, ':', 1, true) + 1))
  end
  return freed, gone
end

-- Held tokens with ended leases left out, read-only. The open set is only looked at
-- once the earliest lease ("next") may have ended: the usual call costs nothing here.
local function live_held(b, open_key, now)
  if b.held == 0 or now < b.next then
    return b.held
  end
  if redis.call('EXISTS', open_key) == 0 then
    return 0  -- the set expired after its last lease: nothing can be held
  end
  return b.held - expired(open_key, now)
end

-- Return ended leases' holds to the budget and move "next" on (bounded per call).
-- With `renew_ms`, also push the open set's expiry that far ahead (reserve does).
local function purge_expired(b, open_key, now, renew_ms)
  if b.held == 0 or now < b.next then
    return b.held
  end
  local freed, gone = expired(open_key, now)
  if #gone > 0 then
    redis.call('ZREM', open_key, unpack(gone))
  end
  local first = redis.call('ZRANGE', open_key, 0, 0, 'WITHSCORES')
  if #first == 0 then
    redis.call('HDEL', KEYS[1], 'held', 'next')  -- nothing open, so nothing held
    b.held, b.next = 0, 0
  else
    if freed ~= 0 then
      b.held = redis.call('HINCRBY', KEYS[1], 'held', -freed)
    end
    b.next = tonumber(first[2])
    redis.call('HSET', KEYS[1], 'next', first[2])
    if renew_ms then
      redis.call('PEXPIREAT', open_key, now + renew_ms)
    end
  end
  return b.held
end

local function decide(b, used, reserved, estimate)
  if b.enabled == 0 then
    return 1, ''
  end
  if used >= b.hard then
    return 0, 'hard-cap-exceeded'
  end
  if estimate > b.hard - used - reserved then
    return 0, 'estimated-exceeds-cap'
  end
  return 1, ''
end

local function decision_reply(ok, reason, used, reserved, b, now, extra)
  return {ok, reason, used, reserved, b.enabled, b.soft, b.hard, b.period, now, extra or 0}
end

-- Count `total` in the day, week and month counters, overall and for `feature`, and
-- return the new total of the budget's own period (-1 without a budget). A counter's
-- expiry is set when it is created (its total equals this event's): one call less.
local function add_usage(feature, total, b)
  local fk = 'f:' .. feature
  local used = -1
  for i = 1, 3 do
    local key = KEYS[1 + i]
    local t = redis.call('HINCRBY', key, 't', total)
    if t == total then
      redis.call('EXPIREAT', key, ARGV[4 + i])
    end
    redis.call('HINCRBY', key, fk, total)
    if b and i == b.idx then
      used = t
    end
  end
  return used
end

-- 1 the first time in the budget's current period that usage is above the soft cap.
local function soft_alert(b, used)
  if b == nil or b.enabled == 0 or used <= b.soft then
    return 0
  end
  local starts = {ARGV[1], ARGV[3], ARGV[4]}
  local marker = b.period .. ':' .. starts[b.idx]
  if b.alert == marker then
    return 0
  end
  redis.call('HSET', KEYS[1], 'alert', marker)
  return 1
end

-- A reservation is one string: "<tokens>|<feature>|<user>|<state>".
local function parse_reservation(value)
  return string.match(value, '^(%d+)|([^|]*)|([^|]*)|(%a+)$')
end

-- Mark a reservation settled ("committed" or "released"): remembered `ttl` seconds,
-- so that a repeated commit or release is a no-op rather than an unknown id.
local function settle_reservation(key, tokens, feature, user, state, ttl)
  redis.call('SET', key, tokens .. '|' .. feature .. '|' .. user .. '|' .. state, 'EX', ttl)
end

-- Append the usage event to the shard's stream, in the same step as the counters.
local function append_event(stream, event_id, port, user, feature, provider, model,
                            input, output, request_id, now)
  redis.call('XADD', stream, '*', 'id', event_id, 'port', port, 'user', user,
             'feature', feature, 'provider', provider, 'model', model,
             'in', input, 'out', output, 'req', request_id, 'at', now)
end
