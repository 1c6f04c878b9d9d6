-- keys: 5
-- KEYS: email index, user hash, users index, legacy set, admin set. ARGV: id, created_at, legacy flag, role, field/value pairs.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], unpack(ARGV, 5))
redis.call('ZADD', KEYS[3], tonumber(ARGV[2]), ARGV[1])
if ARGV[3] == '1' then redis.call('SADD', KEYS[4], ARGV[1]) end
if ARGV[4] == 'admin' then redis.call('SADD', KEYS[5], ARGV[1]) end
return 1
