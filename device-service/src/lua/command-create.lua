-- keys: variable
-- KEYS: command hash, pending index[, batch hash]. ARGV: cid, expires_at (unix ms), record ttl (s),
-- then the record's field/value pairs.
-- Records a command in state sent and counts it in its batch. A batch command whose record
-- exists already (the batch was resumed after the node sending it stopped between recording
-- and publishing it) is left as it is: the caller publishes it again with the same cid and
-- expires_at; the device answers a repeated cid from memory, and a repeated result changes
-- nothing. Returns {1 created | 0 existed, the record's expires_at}.
local existing = redis.call('HGET', KEYS[1], 'expires_at')
if existing then return {0, existing} end
redis.call('HSET', KEYS[1], 'state', 'sent', 'expires_at', ARGV[2], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
if KEYS[3] then redis.call('HINCRBY', KEYS[3], 'sent', 1) end
return {1, ARGV[2]}
