-- keys: 1
-- KEYS: email index. ARGV: user key prefix, token generation key prefix. The generation, then the user's fields.
local id = redis.call('GET', KEYS[1])
if not id then return {} end
local fields = redis.call('HGETALL', ARGV[1] .. id)
table.insert(fields, 1, redis.call('GET', ARGV[2] .. id) or '0')
return fields
