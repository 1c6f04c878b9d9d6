-- keys: 2
-- KEYS: presented token, new token. ARGV: session key prefix, new token's ttl ms, user key
-- prefix, token generation key prefix.
-- Returns {'ok', sid, user, role, gen} | {'reused', sid, user} | {'invalid'}.
local t = redis.call('HMGET', KEYS[1], 'sid', 'user_id', 'used')
if not t[1] then return {'invalid'} end
local session = ARGV[1] .. t[1]
if redis.call('EXISTS', session) == 0 then return {'invalid'} end
if t[3] == '1' then
  redis.call('DEL', session)
  return {'reused', t[1], t[2]}
end
local user = redis.call('HMGET', ARGV[3] .. t[2], 'role', 'sessions_from_gen')
if not user[1] then return {'invalid'} end
if (tonumber(redis.call('HGET', session, 'gen')) or 0) < (tonumber(user[2]) or 0) then
  redis.call('DEL', session)
  return {'invalid'}
end
redis.call('HSET', KEYS[1], 'used', '1')
redis.call('HSET', KEYS[2], 'sid', t[1], 'user_id', t[2], 'used', '0')
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]))
redis.call('PEXPIRE', session, tonumber(ARGV[2]))
return {'ok', t[1], t[2], user[1], redis.call('GET', ARGV[4] .. t[2]) or '0'}
