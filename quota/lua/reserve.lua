-- reserve: decide with open reservations counted, and on success hold `estimate`
-- tokens under a lease that ends by itself. The hold is one member of the open set;
-- the rest of the reservation travels in its id (quota/reservations.py). A budget copy
-- with rate limits or feature caps takes the second branch: a capped feature's
-- reservation holds its feature's tokens too (in the port's state 'x', and its member
-- names the feature), and the rate limits take one request and `estimate` tokens.
-- Registered twice: as reserve_x (`hinted`, its parameter: quota/scripts.py) the client
-- says it knows the port has rate limits or feature caps, and the state is read with
-- the budget copy; only reserve_x sends the feature, so plain reserve answers '-4' for
-- a port with feature caps (the client sends it again as reserve_x).
-- KEYS and ARGV: quota/layouts.py (written into `$name` when the library is built)
-- returns a decision reply (lib.lua) whose reserved field leaves this hold out (the
-- client adds it when ok), or '-1' (budget copy missing) or '-2|<now ms>' or '-4'
local now = now_ms()
local bad = clock_guard(now)
if bad then
  return bad
end
local b = read_budget(KEYS[$port], true, hinted)
if not b then
  return '-1'
end
local estimate = ARGV[$estimate] + 0
if b.limits or b.caps then
  if b.caps and not hinted then
    return '-4'  -- nothing written yet
  end
  local held, freed, freed_f = purge_expired(b, KEYS[$open], KEYS[$lapsed], now,
                                             ARGV[$lapsed_ms])
  local f, member = ARGV[$feature], ARGV[$member]
  local c = b.on and b.caps and b.caps[f]
  local used, used_s, feature_used_s
  if c then  -- the feature's usage read with the port's: one call
    local u = redis.call('HMGET', KEYS[$port + b.idx], 't', c[3])
    used_s, feature_used_s = u[1] or '0', u[2] or '0'
    used = used_s + 0
    member = member .. ':' .. f
  else
    used, used_s = used_in(b)
    feature_used_s = ''
  end
  local ok, reason = decide(b, used, held, estimate)
  local s = b.x
  if not hinted then
    s = redis.call('HGET', KEYS[$port], 'x')
  end
  local v = x_read(b, s, STATE)
  if freed > 0 then
    x_free(b, v, freed, freed_f)  -- ended leases' estimates and features' holds come back
  end
  if c and ok == '1' then
    local feature_used = feature_used_s + 0
    if feature_used >= c[1] or estimate > c[1] - feature_used - v[c[2]] then
      ok, reason = '0', 'feature-cap-exceeded'
    end
  end
  local L, wait = b.limits, 0
  if L then  -- counts the call too, if everything admits it
    local why
    why, wait = rate_take(L, v, now, estimate, ok == '1')
    if ok == '1' and why then
      ok, reason = '0', why
    end
  end
  if ok ~= '1' then
    local state = x_pack(b, v)
    if freed > 0 then
      redis.call('HSET', KEYS[$port], 'x', state)
    end
    if L then
      return rate_decision(ok, reason, used_s, b.held_s, feature_used_s,
                           string.format('%d', wait), b.cfg, state)
    end
    return decision(ok, reason, used_s, b.held_s, feature_used_s, '', b.cfg)
  end
  local lease_end = now + ARGV[$lease_ms]
  local lease_s = string.format('%d', lease_end)
  if redis.call('ZADD', KEYS[$open], 'NX', lease_s, member) == 0 then
    -- a retried call: its hold is there already, and its request counted
    local reserved_s = string.format('%d', held - estimate)
    if L then
      rate_untake(L, v)
    end
    local state = x_pack(b, v)
    if freed > 0 then
      redis.call('HSET', KEYS[$port], 'x', state)
    end
    if L then
      return rate_decision('1', '', used_s, reserved_s, feature_used_s, '0', b.cfg, state)
    end
    return decision('1', '', used_s, reserved_s, feature_used_s, '', b.cfg)
  end
  if held == 0 then
    redis.call('PEXPIREAT', KEYS[$open], string.format('%d', now + OPEN_SET_MS))
  end
  if c then
    local i = c[2]
    v[i] = v[i] + estimate
  end
  -- Every change to the port hash in one HSET (each command costs), no field twice.
  local state = x_pack(b, v)
  local held_s = string.format('%d', held + estimate)
  if held == 0 or lease_end < b.next then
    redis.call('HSET', KEYS[$port], 'held', held_s, 'next', lease_s, 'x', state)
  else
    redis.call('HSET', KEYS[$port], 'held', held_s, 'x', state)
  end
  if L then  -- rate_decision's reply, written out: the call cost ~1.1k instructions here
    return '1||' .. used_s .. '|' .. b.held_s .. '|' .. feature_used_s .. '|0|' .. b.cfg .. '\0'
           .. state
  end
  return decision('1', '', used_s, b.held_s, feature_used_s, '', b.cfg)
end
local held = purge_expired(b, KEYS[$open], KEYS[$lapsed], now, ARGV[$lapsed_ms])
local used, used_s = used_in(b)
local ok, reason = decide(b, used, held, estimate)
if ok == '1' then
  local lease_end = now + ARGV[$lease_ms]
  local lease_s = string.format('%d', lease_end)
  if redis.call('ZADD', KEYS[$open], 'NX', lease_s, ARGV[$member]) == 0 then
    -- A retried call (its reply was lost) finds its hold: never hold twice.
    return decision('1', '', used_s, string.format('%d', held - estimate), '', '', b.cfg)
  end
  if held == 0 then
    -- Nothing else is held, so this lease ends first, and the open set may be new. Its
    -- expiry is renewed by purge_expired whenever the earliest lease ends, so a busy
    -- set never reaches it.
    redis.call('HSET', KEYS[$port], 'next', lease_s, 'held', ARGV[$estimate])
    redis.call('PEXPIREAT', KEYS[$open], string.format('%d', now + OPEN_SET_MS))
  else
    if lease_end < b.next then
      redis.call('HSET', KEYS[$port], 'next', lease_s)  -- a shorter lease than the others
    end
    redis.call('HINCRBY', KEYS[$port], 'held', ARGV[$estimate])
  end
end
return decision(ok, reason, used_s, b.held_s, '', '', b.cfg)
