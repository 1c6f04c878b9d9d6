-- keys: 2
-- KEYS: failures hash, lock hash. ARGV: member, threshold, lock ms. Returns 1 when this
-- failure locked the member. Failure counts expire lock ms after the last failure of any member.
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
if n < tonumber(ARGV[2]) then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[2], ARGV[1], now + tonumber(ARGV[3]))
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3])) end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
