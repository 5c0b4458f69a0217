-- Settlement: exactly once per admitted request. Releases the reservation, charges what was
-- served (never more than was reserved), updates the month's aggregates and appends the usage
-- event to the team's ledger, all in one atomic step. A second settle of the same request finds
-- no reservation and changes nothing.
--
-- KEYS[1] reservations hash   KEYS[2] ledger stream   KEYS[3] idempotency record (see admit.lua)
-- KEYS[4] reservation deadlines (zset)
-- ARGV[1] key prefix   ARGV[2] request id   ARGV[3] status   ARGV[4] images served
-- ARGV[5] charge (micro-USD)   ARGV[6] provider cost (micro-USD)   ARGV[7] model
-- ARGV[8] request fingerprint ('' without an Idempotency-Key)   ARGV[9] response to replay
-- ARGV[10] how long the idempotency record is kept (ms)
-- ARGV[11..] further event fields as name, value pairs

local prefix, rid, status = ARGV[1], ARGV[2], ARGV[3]
local images, charge, cost, model = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]

local r = redis.call('HGET', KEYS[1], rid)
if not r then return {'not_found'} end
local reserved, _, rmonth = string.match(r, '^(%d+)|(%d+)|([%d-]+)|(%d+)$')
reserved = tonumber(reserved)
redis.call('HDEL', KEYS[1], rid)
redis.call('ZREM', KEYS[4], rid)
redis.call('HINCRBY', prefix .. 'usage:' .. rmonth, 'reserved_micros', -reserved)

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local y, m, d = civil(math.floor(tonumber(t[1]) / 86400))
local month = string.format('%04d-%02d', y, m)
local day = string.format('%s-%02d', month, d)
local usage = prefix .. 'usage:' .. month

if status ~= 'succeeded' then
  images, charge = 0, 0
end
if charge > reserved then charge = reserved end

redis.call('HINCRBY', usage, 'requests', 1)
if status == 'succeeded' then
  redis.call('HINCRBY', usage, 'spent_micros', charge)
  redis.call('HINCRBY', usage, 'images', images)
  redis.call('HINCRBY', usage, 'cost_micros', cost)
  local dk = 'd|' .. day .. '|' .. model .. '|'
  redis.call('HINCRBY', usage, dk .. 'images', images)
  redis.call('HINCRBY', usage, dk .. 'requests', 1)
  redis.call('HINCRBY', usage, dk .. 'spent_micros', charge)
else
  redis.call('HINCRBY', usage, 'failed', 1)
end

local fields = {'request_id', rid, 'status', status, 'model', model, 'images', tostring(images),
  'charged_micros', tostring(charge), 'provider_cost_micros', tostring(cost), 'ts_ms', tostring(now)}
for i = 11, #ARGV, 2 do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
end
redis.call('XADD', KEYS[2], '*', unpack(fields))

local fingerprint = ARGV[8]
if fingerprint ~= '' and redis.call('GET', KEYS[3]) == 'running|' .. fingerprint .. '|' .. rid then
  if status == 'succeeded' then
    redis.call('SET', KEYS[3], 'done|' .. fingerprint .. '|' .. ARGV[9], 'PX', tonumber(ARGV[10]))
  else
    -- a failed first attempt leaves nothing behind: a retry with the same key runs afresh
    redis.call('DEL', KEYS[3])
  end
end
return {'ok', charge, month}
