-- keys: 6
-- KEYS: conn hash, index zset, per-kind index zset, node set, nodes set, presence seq
-- ARGV: client id, connected at, node id, is device, then the hash's field/value pairs
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('SADD', KEYS[5], ARGV[3])
if ARGV[4] == '1' then return redis.call('INCR', KEYS[6]) end
return -1
