-- keys: 3
-- KEYS: user hash, admin set, token generation. ARGV: id, new role, updated_at. Refuses to
-- demote the last admin, atomically, so two admins demoting each other cannot leave none.
-- A new role raises the token generation in the same step: every token signed with the
-- old role is revoked, and none can be signed with it afterwards (role and generation are
-- read together when signing).
local role = redis.call('HGET', KEYS[1], 'role')
if not role then return 'missing' end
if role == ARGV[2] then return 'unchanged' end
if role == 'admin' and redis.call('SCARD', KEYS[2]) <= 1 then return 'last-admin' end
redis.call('HSET', KEYS[1], 'role', ARGV[2], 'updated_at', ARGV[3])
if ARGV[2] == 'admin' then redis.call('SADD', KEYS[2], ARGV[1]) else redis.call('SREM', KEYS[2], ARGV[1]) end
redis.call('INCR', KEYS[3])
return 'changed'
