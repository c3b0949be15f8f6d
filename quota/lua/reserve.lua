-- reserve: decide with open reservations counted, and on success hold `estimate`
-- tokens under a lease that ends by itself. The hold is one member of the open set;
-- the rest of the reservation travels in its id (quota/reservations.py). A budget copy
-- with rate limits or feature caps takes the second branch: a capped feature's
-- reservation holds its feature's tokens too ('fh:<feature>', and its member names the
-- feature), and the rate limits take one request and `estimate` tokens.
-- KEYS and ARGV: quota/layouts.py (written into `$name` when the library is built)
-- returns a decision reply (lib.lua) whose reserved field leaves this hold out (the
-- client adds it when ok), or '-1' (budget copy missing) or '-2|<now ms>'
local now = now_ms()
local bad = clock_guard(now)
if bad then
  return bad
end
local b = read_budget(KEYS[$port], true)
if not b then
  return '-1'
end
local held = purge_expired(b, KEYS[$open], KEYS[$lapsed], now, ARGV[$lapsed_ms])
local used, used_s = used_in(b)
local estimate = ARGV[$estimate] + 0
local ok, reason = decide(b, used, held, estimate)
if b.limits or b.caps then
  local f = ARGV[$feature]
  local cap = b.caps and b.on and b.caps[f]
  local state, fh, feature_held, feature_used_s, member = nil, nil, 0, '', ARGV[$member]
  if cap then
    fh = 'fh:' .. f
    if b.limits then
      local h = redis.call('HMGET', KEYS[$port], 'rl', fh)
      state, feature_held = h[1], (h[2] or 0) + 0
    else
      feature_held = (redis.call('HGET', KEYS[$port], fh) or 0) + 0
    end
    local feature_used
    feature_used, feature_used_s = used_in(b, f)
    if ok == '1' and (feature_used >= cap or estimate > cap - feature_used - feature_held) then
      ok, reason = '0', 'feature-cap-exceeded'
    end
    member = member .. ':' .. f
  else
    state = redis.call('HGET', KEYS[$port], 'rl')
  end
  local lv, wait = nil, 0
  if b.limits then
    state = rate_give_back(b, state, b.freed)  -- lapsed leases' estimates come back
    lv = rate_levels(b, state, now)
    local why
    why, wait = rate_admit(b, lv, estimate)
    if ok == '1' and why then
      ok, reason = '0', why
    end
  end
  if ok ~= '1' then
    if lv and b.freed > 0 then
      redis.call('HSET', KEYS[$port], 'rl', state)
    end
    return decision(ok, reason, used_s, b.held_s, feature_used_s,
                    lv and rate_field(wait, now, state) or '', b.cfg)
  end
  local lease_end = now + ARGV[$lease_ms]
  local lease_s = string.format('%d', lease_end)
  if redis.call('ZADD', KEYS[$open], 'NX', lease_s, member) == 0 then
    return decision('1', '', used_s, string.format('%d', held - estimate), feature_used_s,
                    lv and rate_field(0, now, state) or '', b.cfg)  -- a retried call
  end
  -- Every change to the port hash in one HSET (each command costs), its arguments in
  -- one table constructor (a table grown field by field costs ~3k more).
  local rate, held_s = '', string.format('%d', held + estimate)
  local next_f, next_v = 'held', held_s  -- 'held' twice when 'next' stays
  if held == 0 or lease_end < b.next then
    next_f, next_v = 'next', lease_s
  end
  if held == 0 then
    redis.call('PEXPIREAT', KEYS[$open], string.format('%d', now + OPEN_SET_MS))
  end
  if lv then
    rate_add(b, lv, estimate, 1)
    state = rate_state(b, lv, now)
    rate = '0;;' .. state  -- computed at the server's ms: the client reads it there
    if fh then
      redis.call('HSET', KEYS[$port], 'held', held_s, next_f, next_v, 'rl', state, fh,
                 string.format('%d', feature_held + estimate))
    else
      redis.call('HSET', KEYS[$port], 'held', held_s, next_f, next_v, 'rl', state)
    end
  elseif fh then
    redis.call('HSET', KEYS[$port], 'held', held_s, next_f, next_v, fh,
               string.format('%d', feature_held + estimate))
  else  -- caps, none of them this feature's
    redis.call('HSET', KEYS[$port], 'held', held_s, next_f, next_v)
  end
  return decision('1', '', used_s, b.held_s, feature_used_s, rate, b.cfg)
end
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
