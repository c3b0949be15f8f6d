-- The rate limits' and feature caps' helpers of the quota function library, built in
-- after lib.lua (quota/scripts.py): their state, its arithmetic, and the replies and
-- budget-copy changes that carry it.

-- Rate limits and feature caps' holds (quota/ratelimits.py holds the same arithmetic,
-- and the tests hold the two to the same answers). A port with either keeps their
-- state in its hash's 'x' field, numbers packed as little-endian doubles (struct):
-- {ms, level_1..level_n, hold_1..hold_m}, the ms the levels were computed at, each
-- limit's bucket in the budget copy's order, each capped feature's held tokens in its
-- caps' order. Integers, exact below 2^53. budget_put carries the state over when the
-- copy changes (x_carry). Packing them costs less than formatting one number as text
-- (~2k), and reading them less than string.match and strtod: replies carry the state
-- as it is, last (it is binary), and the client works out each limit's headroom.
local LEVEL_MAX = 9007199254740991
-- reserve's state table, refilled per call (as B is: one function runs at a time).
local STATE = {}

local function ceil_div(x, d)
  local q = math.floor(x / d)
  if q * d < x then
    q = q + 1
  end
  return q
end

-- The port's state as a table {ms, levels..., holds...}; a missing or ill-sized one is
-- all zeros (empty buckets, nothing held). Into `into` if given and the state has at
-- most 7 numbers (a table built per call costs ~1k more).
local function x_read(b, s, into)
  local v = into
  if s and #s == 8 * b.xlen then
    if v and b.xlen < 8 then
      v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8] = struct.unpack(b.xfmt, s)
      return v  -- and the position after the numbers, unused
    end
    return {struct.unpack(b.xfmt, s)}
  end
  v = v or {}
  for i = 1, b.xlen do
    v[i] = 0
  end
  return v
end

local function x_pack(b, v)
  return struct.pack(b.xfmt, unpack(v, 1, b.xlen))
end

-- Every bucket of limits L drained to `now`: by r a ms since the state's ms, never
-- below 0. The state is then at `now` (after a clock step back too: the levels stay).
local function rate_drain(L, v, now)
  local gap = now - v[1]
  if gap > 0 then
    for i = 1, #L do
      local level = v[i + 1] - gap * L[i][3]
      if level < 0 then
        level = 0
      end
      v[i + 1] = level
    end
  end
  v[1] = now
end

-- The levels rate_take drained to, before it counted a call: rate_untake's.
local DRAINED = {}

-- The call rate_take counted taken back (a resent reserve's, or a refused one's): the
-- levels it drained to.
local function rate_untake(L, v)
  for i = 1, #L do
    v[i + 1] = DRAINED[i]
  end
end

-- rate_drain, and whether one call of `tokens` fits every bucket then: nil, or the
-- reason and the ms to wait. With `count`, a call that fits is counted in the same
-- pass (one request and `tokens`; a pass over the limits costs ~1.5k instructions);
-- rate_untake takes it back.
local function rate_take(L, v, now, tokens, count)
  local gap, wait, why = now - v[1], 0, nil
  v[1] = now
  for i = 1, #L do
    local lim = L[i]
    local level = v[i + 1]
    if gap > 0 then
      level = level - gap * lim[3]
      if level < 0 then
        level = 0
      end
    end
    DRAINED[i] = level
    local cost = lim[2]  -- one request
    if not lim[1] then
      cost = tokens * cost
    end
    local after = level + cost
    if cost > lim[4] then
      why = 'estimate-exceeds-rate-limit'
    elseif after > lim[4] then
      local w = ceil_div(after - lim[4], lim[3])
      if w > wait then
        wait = w
      end
    end
    if count then
      v[i + 1] = after
    else
      v[i + 1] = level
    end
  end
  if why then
    wait = 0
  elseif wait > 0 then
    why = 'rate-limited'
  else
    return nil, 0
  end
  if count then
    rate_untake(L, v)
  end
  return why, wait
end

-- Count (or, negative, give back) `tokens` and `requests` in the buckets of limits L.
local function rate_add(L, v, tokens, requests)
  for i = 1, #L do
    local lim = L[i]
    local units = tokens
    if lim[1] then
      units = requests
    end
    if units ~= 0 then
      local level = v[i + 1] + units * lim[2]
      if level < 0 then
        level = 0
      elseif level > LEVEL_MAX then
        level = LEVEL_MAX
      end
      v[i + 1] = level
    end
  end
end

-- `tokens` back to the token buckets (a released or lapsed reservation's estimate), at
-- the state's own ms: returned before or after draining, a level comes to the same.
local function rate_give_back(b, v, tokens)
  local L = b.limits
  if L and tokens ~= 0 then
    for i = 1, #L do
      if not L[i][1] then
        local level = v[i + 1] - tokens * L[i][2]
        if level < 0 then
          level = 0
        end
        v[i + 1] = level
      end
    end
  end
end

-- A capped feature's hold moved by `tokens` (never below 0); nothing for another.
local function x_hold(b, v, feature, tokens)
  local c = b.caps and b.caps[feature]
  if c then
    local held = v[c[2]] + tokens
    if held < 0 then
      held = 0
    end
    v[c[2]] = held
  end
end

-- Ended leases' holds (what purge_expired freed) out of the state.
local function x_free(b, v, freed, features)
  rate_give_back(b, v, freed)
  if features then
    for feature, tokens in pairs(features) do
      x_hold(b, v, feature, -tokens)
    end
  end
end

-- A settled reservation (settle's `lapsed` and `featured`) in the state: its feature's
-- hold returned, and for the rate limits a commit's `total` less the estimate (all of
-- it if the lease lapsed, which gave the estimate back) into the buckets at `now`,
-- into debt if need be; a release (`total` nil) gives the estimate back, no clock.
local function x_settle(b, now, member, lapsed, featured, feature, total)
  local v = x_read(b, redis.call('HGET', KEYS[$port], 'x'))
  local estimate = string.sub(member, 34) + 0
  if featured then
    x_hold(b, v, feature, -estimate)
  end
  if b.limits then
    if total == nil then
      rate_give_back(b, v, estimate)
    else
      if lapsed == '0' then
        total = total - estimate
      end
      rate_drain(b.limits, v, now)
      rate_add(b.limits, v, total, 0)
    end
  end
  redis.call('HSET', KEYS[$port], 'x', x_pack(b, v))
end

-- Usage counted after the fact (record): into the buckets at its time, debt or not.
local function rate_count(b, now, tokens, requests)
  local v = x_read(b, redis.call('HGET', KEYS[$port], 'x'))
  rate_drain(b.limits, v, now)
  rate_add(b.limits, v, tokens, requests)
  redis.call('HSET', KEYS[$port], 'x', x_pack(b, v))
end

-- A decision reply of a port with rate limits: decision's fields, the rate field the
-- ms to wait, then a NUL and the state at the server's ms (x_pack).
local function rate_decision(ok, reason, used_s, reserved_s, feature_used_s, wait_s, cfg, state)
  return ok .. '|' .. reason .. '|' .. used_s .. '|' .. reserved_s .. '|' .. feature_used_s
         .. '|' .. wait_s .. '|' .. cfg .. '\0' .. state
end

-- check's and check_many's rate limits, read-only: the decision after the budget's,
-- the ms to wait, and the state at `now`.
local function rate_check(b, port_key, ok, reason, tokens, now)
  local v = x_read(b, redis.call('HGET', port_key, 'x'), STATE)
  local why, wait = rate_take(b.limits, v, now, tokens)
  if ok == '1' and why then
    ok, reason = '0', why
  end
  return ok, reason, string.format('%d', wait), x_pack(b, v)
end

-- budget_put's: the state of a port whose budget copy goes from `old` to `new`, or nil
-- for none. Buckets carry over under the same rate limits (else they start empty),
-- holds by feature (a reservation open while its feature's cap changed settles it).
local function x_carry(old, new, s)
  local o = parse_cfg(old)
  local v = (o.limits or o.caps) and x_read(o, s)
  local holds, o_limits = {}, o.limits and string.match(old, '^%d|%d+|%d+|%a+|([^|]*)|')
  if v and o.caps then
    for feature, c in pairs(o.caps) do
      holds[feature] = v[c[2]]
    end
  end
  local n = parse_cfg(new)
  if not (n.limits or n.caps) then
    return nil
  end
  local w = x_read(n, nil)
  if v and o_limits and o_limits == string.match(new, '^%d|%d+|%d+|%a+|([^|]*)|') then
    for i = 1, #n.limits + 1 do
      w[i] = v[i]
    end
  end
  if n.caps then
    for feature, c in pairs(n.caps) do
      w[c[2]] = holds[feature] or 0
    end
  end
  return x_pack(n, w)
end
