-- A key's last use: moved forward only (processes flush at different moments), and only on a key
-- that still exists (a flush racing a revocation must not bring back part of its record).
-- KEYS[1] the key's record (gw:keyid:<id>)   ARGV[1] unix seconds of the use
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local was = tonumber(redis.call('HGET', KEYS[1], 'last_used') or '0')
if tonumber(ARGV[1]) <= was then return 0 end
redis.call('HSET', KEYS[1], 'last_used', ARGV[1])
return 1
