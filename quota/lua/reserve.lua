-- reserve: decide with open reservations counted, and on success hold `estimate`
-- tokens under a lease that ends by itself. The hold is one member of the open set;
-- the rest of the reservation travels in its id (quota/reservations.py). A capped
-- feature's reservation also holds its feature's tokens ('fh:<feature>'), and its
-- member names the feature; rate limits take one request and `estimate` tokens.
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
local member, feature, feature_used_s, rate, lv = ARGV[$member], nil, '', '', nil
if b.limits or b.caps then  -- the budget copy has rate limits or feature caps
  local f = ARGV[$feature]
  local h = redis.call('HMGET', KEYS[$port], 'rl', 'fh:' .. f)
  local cap = b.caps and b.on and b.caps[f]
  if cap then
    local feature_used
    feature_used, feature_used_s = used_in(b, f)
    if ok == '1' and (feature_used >= cap or estimate > cap - feature_used - (h[2] or 0)) then
      ok, reason = '0', 'feature-cap-exceeded'
    end
    feature, member = f, member .. ':' .. f
  end
  if b.limits then
    lv = rate_levels(b, rate_give_back(b, h[1], b.freed), now)  -- lapsed estimates back
    local why, wait = rate_admit(b, lv, estimate)
    if ok == '1' and why then
      ok, reason = '0', why
    end
    if ok ~= '1' then
      if b.freed > 0 then
        rate_store(lv, now)
      end
      rate = rate_field(b, lv, wait, now)
    end
  end
end
if ok == '1' then
  local lease_end = now + ARGV[$lease_ms]
  local lease_s = string.format('%d', lease_end)
  if redis.call('ZADD', KEYS[$open], 'NX', lease_s, member) == 0 then
    -- A retried call (its reply was lost) finds its hold: never hold twice.
    if lv then
      rate = rate_field(b, lv, 0, now)
    end
    return decision('1', '', used_s, string.format('%d', held - estimate), feature_used_s,
                    rate, b.cfg)
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
  if feature then
    redis.call('HINCRBY', KEYS[$port], 'fh:' .. feature, ARGV[$estimate])
  end
  if lv then
    rate_add(b, lv, estimate, 1)
    rate_store(lv, now)
    rate = rate_field(b, lv, 0, now)
  end
end
return decision(ok, reason, used_s, b.held_s, feature_used_s, rate, b.cfg)
