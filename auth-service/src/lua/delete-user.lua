-- keys: 6
-- KEYS: user hash, email index, users index, legacy set, admin set, token generation.
-- ARGV: id, how long the raised generation must outlive the user (ms: the longest token lifetime).
local role = redis.call('HGET', KEYS[1], 'role')
if not role then return 'missing' end
if role == 'admin' and redis.call('SCARD', KEYS[5]) <= 1 then return 'last-admin' end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('SREM', KEYS[5], ARGV[1])
redis.call('INCR', KEYS[6])
redis.call('PEXPIRE', KEYS[6], tonumber(ARGV[2]))
return 'ok'
