-- Read one route's shared health in one round trip (what the breaker's cache holds).
-- KEYS[1] state hash   KEYS[2] latency list (ms, newest first)
-- Returns {state, opened_ms, ewma_ms, {latency, ...}}; a field never written is nil.
local f = redis.call('HMGET', KEYS[1], 'state', 'opened_ms', 'ewma_ms')
return {f[1], f[2], f[3], redis.call('LRANGE', KEYS[2], 0, -1)}
