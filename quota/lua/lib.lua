-- Shared helpers of the quota function library. quota/scripts.py builds the library:
-- a header that declares KEYS, ARGV (set by each function before its body runs) and
-- OPEN_SET_MS, then this file and rates.lua (the rate limits' and feature caps'
-- helpers), then every operation file as one registered function.
-- Only local functions and constants: created once when the library loads, not on
-- every call as they would be in an EVAL script.
--
-- Conventions shared by check, reserve, commit and record: their KEYS start with the
-- port hash and its day/week/month usage hashes, their ARGV with the day the client
-- named (quota/layouts.py's PERIOD_KEYS and PERIOD_ARGS; `$name` becomes the index).
-- Replies are strings, fields joined by '|' (a table reply costs Redis ~5k
--   instructions to convert, a string ~0.3k). The first field is the code: 1 done/ok,
--   0 refused, 2 no-op (duplicate or settled), -1 budget copy missing (client loads it
--   and retries), -2 server clock outside the client's day (second field: server ms;
--   client retries), -3 unknown reservation.
--
-- Cost (callgrind, docs/BENCHMARKS.md): each ARGV element, each redis.call and each
-- number<->string conversion costs about as much as a small command does. So
-- arguments are few, strings go to redis.call as they came, and only the numbers a
-- decision compares are converted, as `s + 0`: Lua 5.1's tonumber(s) parses the string
-- twice (lua_isnumber, then lua_tonumber), arithmetic coercion once. A number that
-- must go to redis.call on the hot path goes as string.format('%d', n): Redis would
-- format it with %.17g, which costs ~1.6k instructions more.

local DAY_MS = 86400000
local PERIOD_INDEX = {day = 1, week = 2, month = 3}

local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end

-- The client named the period keys from its own clock; the server's clock decides.
-- A day lies inside one week and one month, so checking the day is enough.
local function clock_guard(now)
  if math.floor(now / DAY_MS) ~= ARGV[$day] + 0 then
    return '-2|' .. string.format('%d', now)
  end
  return nil
end

-- First day of the period `idx` (1 day, 2 ISO week, 3 UTC month) that contains `day`,
-- and the first day after it: quota/periods.py's boundaries, in days since the epoch.
local function period_days(idx, day)
  if idx == 1 then
    return day, day + 1
  end
  if idx == 2 then
    local start = day - (day + 3) % 7  -- 1970-01-01 was a Thursday
    return start, start + 7
  end
  -- The day of the month and the month's length, from H. Hinnant's civil_from_days.
  local z = day + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
                          - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local dom = doy - math.floor((153 * mp + 2) / 5) + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400 + (month <= 2 and 1 or 0)
  local len = 31
  if month == 2 then
    len = (year % 4 == 0 and (year % 100 ~= 0 or year % 400 == 0)) and 29 or 28
  elseif month == 4 or month == 6 or month == 9 or month == 11 then
    len = 30
  end
  local start = day - dom + 1
  return start, start + len
end

-- The budget copy of the port being decided, refilled by read_budget: a fresh
-- ten-field table costs ~5k instructions per call, and as a function never runs inside
-- another, one table shared by all calls is safe (check_many refills it per port). Its
-- fields are false, never nil, when absent: a nil stored under a key leaves a dead
-- entry that the next rehash drops, and storing it again then rehashes the table
-- (~1k instructions a call, measured with four such fields).
local B = {}

-- Budget copies parsed, by their cfg string: ports mostly share a few plans, and a
-- lookup (Lua interns strings) saves string.match and two number conversions: ~4k
-- instructions per call when budgets repeat, ~1.4k more than no memo when nearly
-- every call brings a budget not kept (callgrind). Bounded: once CFG_LIMIT copies are
-- in, others are parsed without being kept (emptying it whenever full made a thrashing
-- memo cost ~10k per call), and it is emptied after many such misses, so that a
-- workload whose budgets changed refills it.
local CFG, cfg_count, cfg_misses, CFG_LIMIT = {}, 0, 0, 4096

-- A budget copy's rate limits and feature caps, when it has them (quota/ratelimits.py
-- writes both): limits "<q|t>:<s>:<limit>[:<size>],..." become {requests?, a, r, cap}
-- (scale); caps "<feature>=<tokens>,..." a table by feature of {cap, the feature's hold's
-- place in the port's state (x_read), its usage field}. nil for none. Also the state's
-- struct format and its number of values: every number of the state in one
-- struct.pack, where formatting them as text cost ~2k each and reading them back
-- (string.match, strtod) as much.
-- A limit of `limit` units per `per_ms` with a bucket of `size`: {requests?, a unit's
-- cost, the drain per ms, the bucket's size}, in integers (quota/ratelimits.py's scale).
local function scale(requests, per_ms, limit, size)
  local x, y = per_ms, limit
  while y ~= 0 do
    x, y = y, x % y
  end
  return {requests, per_ms / x, limit / x, size * (per_ms / x)}
end

local function parse_extra(limits, caps)
  local L, C, n, m = false, false, 0, 0
  if limits ~= '' then
    L = {}
    for kind, s, limit, size in string.gmatch(limits, '(%a):(%d+):(%d+):?(%d*)') do
      L[#L + 1] = scale(kind == 'q', s * 1000, limit + 0, size == '' and limit + 0 or size + 0)
    end
    n = #L
  end
  if caps ~= '' then
    C = {}
    for f, cap in string.gmatch(caps, '([^,=]+)=(%d+)') do
      m = m + 1
      C[f] = {cap + 0, 1 + n + m, 'f:' .. f}
    end
  end
  return L, C, '<' .. string.rep('d', 1 + n + m), 1 + n + m
end

local function parse_cfg(cfg)
  local c = CFG[cfg]
  if c then
    B.cfg, B.on, B.soft, B.hard, B.period, B.idx = cfg, c[1], c[2], c[3], c[4], c[5]
    B.limits, B.caps = c[6], c[7]
    if c[8] then  -- left stale for a plain copy, whose calls never read them
      B.xfmt, B.xlen = c[8], c[9]
    end
    return B
  end
  local on, soft, hard, period = string.match(cfg, '^(%d)|(%d+)|(%d+)|(%a+)$')
  local limits, caps, xfmt, xlen = false, false, false, false
  if not on then  -- a copy with rate limits or feature caps
    local l, f
    on, soft, hard, period, l, f = string.match(cfg, '^(%d)|(%d+)|(%d+)|(%a+)|([^|]*)|(.*)$')
    limits, caps, xfmt, xlen = parse_extra(l, f)
  end
  if cfg_count < CFG_LIMIT then
    c = {on == '1', soft + 0, hard + 0, period, PERIOD_INDEX[period], limits, caps, xfmt, xlen}
    CFG[cfg], cfg_count = c, cfg_count + 1
    B.cfg, B.on, B.soft, B.hard, B.period, B.idx = cfg, c[1], c[2], c[3], c[4], c[5]
    B.limits, B.caps, B.xfmt, B.xlen = limits, caps, xfmt, xlen
    return B
  end
  cfg_misses = cfg_misses + 1
  if cfg_misses > 16 * CFG_LIMIT then
    CFG, cfg_count, cfg_misses = {}, 0, 0
  end
  B.cfg, B.on, B.soft, B.hard, B.period = cfg, on == '1', soft + 0, hard + 0, period
  B.idx, B.limits, B.caps, B.xfmt, B.xlen = PERIOD_INDEX[period], limits, caps, xfmt, xlen
  return B
end


-- The budget copy and the holds, in one call; nil if the budget copy is missing.
-- `cfg` is kept as stored (replies pass it on) and parsed once per distinct budget
-- (parse_cfg); 'next' is read as a number only once something is held
-- (purge_expired, live_held). Reserve reads 'next' here, as it purges by it; check
-- and check_many leave it to live_held, which reads it only when something is held:
-- most ports have nothing in flight, and an HMGET field costs ~2.5k instructions.
-- `held_s` is 'held' as a string, for replies. The soft-alert marker is read by
-- soft_alert, when needed. `with_x` (a reserve whose client knows the port has rate
-- limits or feature caps) reads their state 'x' too, as B.x: one field more here costs
-- less than a call for it later, and would cost every other port if always read.
local function read_budget(key, with_next, with_x)
  local h
  if with_x then
    h = redis.call('HMGET', key, 'cfg', 'held', 'next', 'x')
  elseif with_next then
    h = redis.call('HMGET', key, 'cfg', 'held', 'next')
  else
    h = redis.call('HMGET', key, 'cfg', 'held')
  end
  local cfg = h[1]
  if not cfg then
    return nil
  end
  parse_cfg(cfg)
  B.held_s = h[2] or '0'
  B.held, B.next = B.held_s + 0, h[3]  -- false, not nil, for a missing field
  if with_x then
    B.x = h[4]
  end
  return B
end

-- The budget copy alone (commit and record need no holds): one HGET, where each
-- field more of an HMGET costs ~2.5k instructions. B's hold fields are left stale.
local function read_cfg()
  local cfg = redis.call('HGET', KEYS[$port], 'cfg')
  if not cfg then
    return nil
  end
  return parse_cfg(cfg)
end

-- b.held changed on a rare path: keep its string in step.
local function set_held(b, held)
  b.held, b.held_s = held, string.format('%d', held)
end

-- Tokens used in the budget's own period (all three are always counted). The usage
-- keys are KEYS[base + 1 .. base + 3] (base 1 unless check_many says otherwise).
-- Returns the number and the string (for the reply).
local function used_in(b, feature, base)
  local field = 't'
  if feature then
    field = 'f:' .. feature
  end
  local s = redis.call('HGET', KEYS[(base or $port) + b.idx], field) or '0'
  return s + 0, s
end

-- The tokens an open-set member holds, as a string, and its feature if it holds that
-- feature's tokens too: a member is "<32 hex>:<tokens>", or "<32 hex>:<tokens>:<feature>"
-- for a reservation of a capped feature (reserve).
local function member_tokens(member)
  local colon = string.find(member, ':', 34, true)
  if colon then
    return string.sub(member, 34, colon - 1), string.sub(member, colon + 1)
  end
  return string.sub(member, 34)
end

-- Sum of the open-set members whose lease ended, bounded, the members, and (if
-- `by_feature`) the tokens of those that held their feature's too, by feature (nil
-- for none).
local function expired(open_key, now, by_feature)
  local gone = redis.call('ZRANGEBYSCORE', open_key, '-inf', now, 'LIMIT', 0, 256)
  local freed, features = 0, nil
  for i = 1, #gone do
    local tokens, feature = member_tokens(gone[i])
    freed = freed + tokens
    if feature and by_feature then
      features = features or {}
      features[feature] = (features[feature] or 0) + tokens
    end
  end
  return freed, gone, features
end

-- Held tokens with ended leases left out, read-only, as a string. "next" is read
-- (unless read_budget did) only when something is held, and the open set only once
-- the earliest lease may have ended: the usual call costs nothing here.
local function live_held(b, port_key, open_key, now)
  if b.held == 0 or now < (b.next or redis.call('HGET', port_key, 'next') or 0) + 0 then
    return b.held_s
  end
  if redis.call('EXISTS', open_key) == 0 then
    return '0'  -- the set expired after its last lease: nothing can be held
  end
  return string.format('%d', b.held - expired(open_key, now))
end

-- Remember reservations whose lease ended, their hold returned, for `ms` more: a late
-- commit still counts its usage (lease_expired) and a late release is still known.
-- The set outlives its newest entry by nothing: every entry is forgotten by then.
local function lapse(lapsed_key, gone, now, ms)
  local forget = string.format('%d', now + ms)
  local args = {}
  for i = 1, #gone do
    args[2 * i - 1], args[2 * i] = forget, gone[i]
  end
  redis.call('ZREMRANGEBYSCORE', lapsed_key, '-inf', string.format('%d', now))
  redis.call('ZADD', lapsed_key, unpack(args))
  redis.call('PEXPIREAT', lapsed_key, forget)
end

-- Return ended leases' holds to the budget (their reservations lapse), move "next" on
-- and push the open set's expiry OPEN_SET_MS ahead (bounded per call; reserve's).
-- Leaves b.next a number whenever something is held. Returns what is held then, the
-- tokens returned and those of features' holds, by feature (nil for none): reserve
-- returns them to the rate and cap state.
local function purge_expired(b, open_key, lapsed_key, now, lapsed_ms)
  if b.held == 0 then
    return 0, 0
  end
  b.next = (b.next or 0) + 0
  if now < b.next then
    return b.held, 0
  end
  local freed, gone, features = expired(open_key, now, b.caps)
  if #gone > 0 then
    redis.call('ZREM', open_key, unpack(gone))
    lapse(lapsed_key, gone, now, lapsed_ms)
  end
  local first = redis.call('ZRANGE', open_key, 0, 0, 'WITHSCORES')
  if #first == 0 then
    redis.call('HDEL', KEYS[$port], 'held', 'next')  -- nothing open, so nothing held
    set_held(b, 0)
    b.next = 0
  else
    if freed ~= 0 then
      set_held(b, redis.call('HINCRBY', KEYS[$port], 'held', -freed))
    end
    b.next = first[2] + 0
    redis.call('HSET', KEYS[$port], 'next', first[2])
    redis.call('PEXPIREAT', open_key, now + OPEN_SET_MS)
  end
  return b.held, freed, features
end

-- quota/decisions.py's rules; the code comes back as the reply's string.
local function decide(b, used, reserved, estimate)
  if not b.on then
    return '1', ''
  end
  if used >= b.hard then
    return '0', 'hard-cap-exceeded'
  end
  if estimate > b.hard - used - reserved then
    return '0', 'estimated-exceeds-cap'
  end
  return '1', ''
end

-- A decision reply: "<ok>|<reason>|<used>|<reserved>|<feature used or ''>|<rate>|<cfg>"
-- (rate '' for a port without rate limits; one with them replies by rate_decision).
local function decision(ok, reason, used_s, reserved_s, feature_used_s, rate, cfg)
  return ok .. '|' .. reason .. '|' .. used_s .. '|' .. reserved_s .. '|' .. feature_used_s
         .. '|' .. rate .. '|' .. cfg
end

-- A usage reply (commit, record): "<code>|<used or -1>|<alert 0/1>|<lease expired 0/1>"
-- and, with an alert, "|<cfg>" (the client needs the soft cap and period). All but
-- `used` come as strings: Lua turns a number into a string with sprintf('%.14g').
local function usage_reply(code, used, alert, lease_expired, cfg)
  local s = code .. '|' .. string.format('%d', used) .. '|' .. alert .. '|' .. lease_expired
  if cfg then
    return s .. '|' .. cfg
  end
  return s
end

-- Count `total` (ARGV string; `n` is its number) in the day, week and month counters,
-- overall and for `feature`, and return the new total of the budget's own period
-- (-1 without a budget). A counter's expiry (a grace day past its period) is set when
-- the counter is created, which is when its total equals this event's.
local function add_usage(feature, total, n, b)
  local fk = 'f:' .. feature
  local used = -1
  for i = 1, 3 do
    local key = KEYS[$port + i]
    local t = redis.call('HINCRBY', key, 't', total)
    if t == n then
      local _, after = period_days(i, tonumber(ARGV[$day]))
      redis.call('EXPIREAT', key, string.format('%d', (after + 1) * 86400))
    end
    redis.call('HINCRBY', key, fk, total)
    if b and i == b.idx then
      used = t
    end
  end
  return used
end

-- True the first time in the budget's current period that usage is above the soft cap.
local function soft_alert(b, used)
  if b == nil or not b.on or used <= b.soft then
    return false
  end
  local start = period_days(b.idx, tonumber(ARGV[$day]))
  local marker = b.period .. ':' .. string.format('%d', start)
  if redis.call('HGET', KEYS[$port], 'alert') == marker then
    return false
  end
  redis.call('HSET', KEYS[$port], 'alert', marker)
  return true
end

-- Settle a reservation (commit, release) by its member, "<32 hex>:<tokens>" (or that
-- and ":<feature>", when reserve held its feature's tokens too, as a capped feature's
-- reserve does): out of the open set with its tokens off 'held', or out of the lapsed
-- set (a purge returned its holds when its lease ended), then remembered as `state`
-- for `ttl` seconds, so that a repeated commit or release is a no-op. Returns '0' if
-- it was open, '1' if it had lapsed, nil if neither: settled already (settled_key
-- exists) or unknown; and true if it was open holding its feature's tokens too (the
-- caller returns them: x_settle).
local function settle(open_key, lapsed_key, member, feature, settled_key, state, ttl)
  local lapsed, featured = '0', false
  local tokens = string.sub(member, 34)  -- the caller's member: the short form
  if redis.call('ZREM', open_key, member) == 1 then
    redis.call('HINCRBY', KEYS[$port], 'held', '-' .. tokens)
  elseif redis.call('ZREM', open_key, member .. ':' .. feature) == 1 then
    redis.call('HINCRBY', KEYS[$port], 'held', '-' .. tokens)
    featured = true
  elseif redis.call('ZREM', lapsed_key, member) == 1
      or redis.call('ZREM', lapsed_key, member .. ':' .. feature) == 1 then
    lapsed = '1'
  else
    return nil
  end
  redis.call('SET', settled_key, state, 'EX', ttl)
  return lapsed, featured
end

-- Append the usage event to the shard's stream: one field, 'e' =
-- "id|port|user|feature|provider|model|in|out|req" (quota/entries.py). Its time is the
-- entry id's, which XADD takes from the server's clock (never going back: after a
-- clock step back Redis keeps the last id's ms), so commit and record need no TIME:
-- they append first and decide by the id's time, and remove the entry (XDEL) if they
-- then count nothing. Returns the id and its ms.
local function append_event(stream, event)
  local id = redis.call('XADD', stream, '*', 'e', event)
  return id, string.match(id, '^%d+') + 0
end
