-- keys: 5
-- KEYS: conn hash, index zset, node set, presence seq, per-kind index zset; ARGV: client id, conn id, is device
redis.call('SREM', KEYS[3], ARGV[1])
if redis.call('HGET', KEYS[1], 'conn_id') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
if ARGV[3] == '1' then return redis.call('INCR', KEYS[4]) end
return -1
