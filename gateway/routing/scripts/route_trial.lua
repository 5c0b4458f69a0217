-- Ask to send a trial request to an open route. After the cool-down exactly one caller, across all
-- gateway processes, gets the trial (the route goes half-open); the rest are refused until it
-- reports back (or the trial's holder is presumed dead after `trial_ms`).
--
-- KEYS[1] state hash   ARGV[1] cool-down ms   ARGV[2] trial ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local s = redis.call('HMGET', KEYS[1], 'state', 'opened_ms', 'trial_until_ms')
local state = s[1] or 'closed'
if state == 'closed' then return 'closed' end
if state == 'open' and now - tonumber(s[2] or 0) < tonumber(ARGV[1]) then return 'open' end
if state == 'half_open' and now < tonumber(s[3] or 0) then return 'open' end
redis.call('HSET', KEYS[1], 'state', 'half_open', 'trial_until_ms', now + tonumber(ARGV[2]))
return 'trial'
