-- Admission: one atomic decision per request. Refuses a disabled team's requests outright
-- (nothing written but the housekeeping below). Checks the team's requests/minute and
-- images/minute sliding windows, its in-flight limit and its monthly budget (spent + reserved +
-- this quote), then records the request in both windows and reserves the quoted price.
-- Expired reservations (a gateway that died mid-request) are released first.
-- Every key shares the team's hash tag, so this runs unchanged on Redis Cluster.
--
-- KEYS[1] team hash   KEYS[2] request window (zset)   KEYS[3] image window (zset)
-- KEYS[4] reservations (hash: request_id -> "micros|images|month|deadline_ms")
-- KEYS[5] the idempotency record for this request's Idempotency-Key (unused when ARGV[6] is '')
-- KEYS[6] reservation deadlines (zset: request_id -> deadline_ms)
-- ARGV[1] key prefix "gw:{t:<id>}:"   ARGV[2] request id   ARGV[3] images   ARGV[4] quote (micro-USD)
-- ARGV[5] how long the reservation holds (ms)   ARGV[6] request fingerprint, '' without a key
-- ARGV[7] '1' for a dry run: the same checks, nothing written (no housekeeping either), and the
--         budget and in-flight figures appended to the verdict
--
-- An idempotency record is "running|<fingerprint>|<request id>" while the first request runs
-- (it expires with the reservation) and "done|<fingerprint>|<response>" once it succeeded.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local y, m = civil(math.floor(tonumber(t[1]) / 86400))
local month = string.format('%04d-%02d', y, m)
local prefix, rid = ARGV[1], ARGV[2]
local images, quote, hold = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local dry = ARGV[7] == '1'

local team = redis.call('HMGET', KEYS[1], 'rpm', 'ipm', 'max_in_flight', 'budget_micros', 'disabled')
if not team[1] then return {'no_team'} end
local rpm, ipm, max_in_flight, budget = tonumber(team[1]), tonumber(team[2]), tonumber(team[3]), tonumber(team[4])
local disabled = team[5] == '1'

-- release reservations whose holder died (the deadline index finds them without scanning every
-- reservation, so admission stays cheap with thousands in flight)
local expired = dry and {} or redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now - 1, 'LIMIT', 0, 100)
for _, erid in ipairs(expired) do
  redis.call('ZREM', KEYS[6], erid)
  local r = redis.call('HGET', KEYS[4], erid)
  if r then
    local micros, _, rmonth = string.match(r, '^(%d+)|(%d+)|([%d-]+)|(%d+)$')
    redis.call('HDEL', KEYS[4], erid)
    redis.call('HINCRBY', prefix .. 'usage:' .. rmonth, 'reserved_micros', -tonumber(micros))
    redis.call('XADD', prefix .. 'ledger', '*', 'request_id', erid, 'status', 'expired',
      'images', '0', 'charged_micros', '0', 'provider_cost_micros', '0', 'ts_ms', tostring(now))
  end
end

-- before the idempotency record: a disabled team is not answered from it either
if disabled and not dry then return {'team_disabled'} end
if redis.call('HEXISTS', KEYS[4], rid) == 1 then return {'duplicate'} end

local fingerprint = ARGV[6]
if fingerprint ~= '' and not dry then
  local record = redis.call('GET', KEYS[5])
  if record then
    local state, fp, rest = string.match(record, '^(%a+)|(%x+)|(.*)$')
    if fp ~= fingerprint then return {'idem_mismatch'} end
    if state == 'done' then return {'idem_replay', rest} end
    return {'idem_running', rest}
  end
end

local window = 60000
local req_used, img_used
if dry then  -- count what the window holds without trimming it
  req_used = redis.call('ZCOUNT', KEYS[2], '(' .. (now - window), '+inf')
  img_used = redis.call('ZCOUNT', KEYS[3], '(' .. (now - window), '+inf')
else
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
  req_used = redis.call('ZCARD', KEYS[2])
  img_used = redis.call('ZCARD', KEYS[3])
end

local function reset_after(key, nth)
  -- ms until the nth-oldest entry (0-based) leaves the window
  local e = redis.call('ZRANGE', key, nth, nth, 'WITHSCORES')
  if #e == 0 then return 0 end
  return math.max(0, tonumber(e[2]) + window - now)
end

local usage = prefix .. 'usage:' .. month
local u = redis.call('HMGET', usage, 'spent_micros', 'reserved_micros')
local spent, reserved = tonumber(u[1]) or 0, tonumber(u[2]) or 0
local in_flight = redis.call('HLEN', KEYS[4])

local function verdict(code)
  -- in a dry run the window is untrimmed: its oldest entries may have left it already
  local first = dry and redis.call('ZCOUNT', KEYS[2], '-inf', now - window) or 0
  local req_reset = req_used > 0 and reset_after(KEYS[2], first) or 0
  first = dry and redis.call('ZCOUNT', KEYS[3], '-inf', now - window) or 0
  local img_reset = img_used > 0 and reset_after(KEYS[3], first) or 0
  local v = {code, rpm, math.max(0, rpm - req_used), req_reset, ipm, math.max(0, ipm - img_used), img_reset, month}
  if dry then
    v[9], v[10], v[11], v[12], v[13] = spent, budget, reserved, in_flight, max_in_flight
  end
  return v
end

if disabled then return verdict('team_disabled') end  -- a dry run: refused, with the figures
if images > ipm then return verdict('images_over_limit') end
if req_used + 1 > rpm then return verdict('rpm') end
if img_used + images > ipm then
  local v = verdict('ipm')
  v[7] = reset_after(KEYS[3], img_used + images - ipm - 1)
  return v
end
if in_flight + 1 > max_in_flight then return verdict('in_flight') end

if spent + reserved + quote > budget then
  local v = verdict('budget')
  v[9] = spent
  v[10] = budget
  return v
end
if dry then return verdict('ok') end

redis.call('ZADD', KEYS[2], now, rid)
for i = 1, images do redis.call('ZADD', KEYS[3], now, rid .. ':' .. i) end
redis.call('PEXPIRE', KEYS[2], window * 2)
redis.call('PEXPIRE', KEYS[3], window * 2)
redis.call('HSET', KEYS[4], rid, quote .. '|' .. images .. '|' .. month .. '|' .. (now + hold))
redis.call('ZADD', KEYS[6], now + hold, rid)
redis.call('HINCRBY', usage, 'reserved_micros', quote)
if fingerprint ~= '' then
  redis.call('SET', KEYS[5], 'running|' .. fingerprint .. '|' .. rid, 'PX', hold)
end
req_used = req_used + 1
img_used = img_used + images
return verdict('ok')
