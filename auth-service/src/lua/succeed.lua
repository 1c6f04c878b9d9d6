-- keys: 2
-- KEYS: failures hash, recent-members set. ARGV: member, keep ms, keep at most. Clears the
-- member's failures and records it as recent (newest `keep at most`, none older than keep ms).
redis.call('HDEL', KEYS[1], ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]))
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[3]) + 1))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]))
return 1
