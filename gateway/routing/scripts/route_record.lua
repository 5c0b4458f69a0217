-- Record one attempt's outcome on a route and move its circuit breaker. Shared by every gateway
-- process: the state lives here, not in any one process.
--   closed    -> open       after `consecutive` failures in a row, or a failure ratio of at least
--                           `ratio` over the last `window` outcomes once `min_samples` are in
--   half_open -> closed     on the trial's success;  half_open -> open on its failure
-- A failure the request itself may have caused (ARGV[10] names the team that sent it; an answer we
-- could not parse may echo the caller's input) counts only once such failures came from ARGV[12]
-- teams within ARGV[11] ms: until then it moves nothing, and a trial it failed is handed back
-- (open, its cool-down already over) so the next request may try the route at once.
--
-- KEYS[1] state hash (state, opened_ms, consecutive, ewma_ms)   KEYS[2] outcome list   KEYS[3] latency list
-- KEYS[4] sorted set: team -> when it last saw a failure it may have caused (ms)
-- ARGV[1] 1 success / 0 failure   ARGV[2] latency ms (-1: none), or for successes several latencies
--         separated by spaces (a batch of successes, one outcome each)   ARGV[3] window   ARGV[4] min_samples
-- ARGV[5] failure ratio   ARGV[6] consecutive failures   ARGV[7] latency samples kept   ARGV[8] EWMA weight
-- ARGV[9] when the outcome happened (wall-clock ms; for a batch, its latest success). A batch of
--         successes written late resets the consecutive-failure count only if it is newer than
--         the last failure, so batching never hides a run of failures.
-- ARGV[10] for a failure the request may have caused, the team that sent it; '' otherwise
-- ARGV[11] how long such a failure waits for another team's (ms)   ARGV[12] teams needed

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ok = ARGV[1] == '1'
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'

if not ok and ARGV[10] ~= '' then
  local window_ms = tonumber(ARGV[11])
  redis.call('ZADD', KEYS[4], now, ARGV[10])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - window_ms)
  redis.call('PEXPIRE', KEYS[4], window_ms)
  if redis.call('ZCARD', KEYS[4]) < tonumber(ARGV[12]) then
    if state == 'half_open' then
      redis.call('HSET', KEYS[1], 'state', 'open')  -- opened_ms kept: the cool-down has passed
      return 'open'
    end
    return state
  end
end

local latencies = {}
for v in string.gmatch(ARGV[2], '%S+') do
  if tonumber(v) >= 0 then latencies[#latencies + 1] = tonumber(v) end
end
local window, min_samples = tonumber(ARGV[3]), tonumber(ARGV[4])
local ratio, consecutive_max = tonumber(ARGV[5]), tonumber(ARGV[6])

local outcomes = (ok and #latencies > 1) and #latencies or 1
for _ = 1, outcomes do redis.call('LPUSH', KEYS[2], ok and '1' or '0') end
redis.call('LTRIM', KEYS[2], 0, window - 1)

if #latencies > 0 then
  local ewma = tonumber(redis.call('HGET', KEYS[1], 'ewma_ms'))
  local w = tonumber(ARGV[8])
  for _, latency in ipairs(latencies) do
    redis.call('LPUSH', KEYS[3], latency)
    ewma = ewma and (ewma * (1 - w) + latency * w) or latency
  end
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[7]) - 1)
  redis.call('HSET', KEYS[1], 'ewma_ms', string.format('%.1f', ewma))
end

local at = tonumber(ARGV[9])
if ok then
  if at > (tonumber(redis.call('HGET', KEYS[1], 'last_failure_ms')) or 0) then
    redis.call('HSET', KEYS[1], 'consecutive', 0)
  end
  if state == 'half_open' then
    redis.call('HSET', KEYS[1], 'state', 'closed')
    state = 'closed'
  end
  return state
end

local consecutive = redis.call('HINCRBY', KEYS[1], 'consecutive', 1)
if at > (tonumber(redis.call('HGET', KEYS[1], 'last_failure_ms')) or 0) then
  redis.call('HSET', KEYS[1], 'last_failure_ms', at)
end
if state == 'half_open' then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_ms', now)
  return 'open'
end
if state == 'closed' then
  local outcomes = redis.call('LRANGE', KEYS[2], 0, -1)
  local failures = 0
  for _, o in ipairs(outcomes) do
    if o == '0' then failures = failures + 1 end
  end
  if consecutive >= consecutive_max or (#outcomes >= min_samples and failures / #outcomes >= ratio) then
    redis.call('HSET', KEYS[1], 'state', 'open', 'opened_ms', now)
    redis.call('DEL', KEYS[2])
    return 'open'
  end
end
return state
