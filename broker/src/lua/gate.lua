-- keys: 2
-- The connect gate, once per WebSocket upgrade. KEYS: the address's ban, its connect
-- attempts in this window. ARGV: window ms, attempts allowed per window.
-- Returns {0, 0} to admit, {1, ban ms left} when banned, {2, window ms left} when over the limit.
local ban = redis.call('PTTL', KEYS[1])
if ban > 0 then return {1, ban} end
local n = redis.call('INCR', KEYS[2])
if n == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[1]) end
if n > tonumber(ARGV[2]) then return {2, redis.call('PTTL', KEYS[2])} end
return {0, 0}
