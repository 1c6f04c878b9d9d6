-- keys: 3
-- KEYS: user hash, legacy set, token generation. ARGV: id, hash, updated_at, changed (1/0), legacy (1/0).
-- A changed password raises the token generation and makes it the floor for sessions: the
-- user's access tokens and refresh sessions end in the same step as the old password, even
-- a session a login starts after having checked the old password. A re-hash of the same
-- password changes neither. Returns 0 when the user no longer exists (nothing written).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'password_hash', ARGV[2], 'updated_at', ARGV[3])
if ARGV[4] == '1' then
  local gen = redis.call('INCR', KEYS[3])
  redis.call('HSET', KEYS[1], 'password_changed_at', ARGV[3], 'sessions_from_gen', gen)
end
if ARGV[5] == '1' then redis.call('SADD', KEYS[2], ARGV[1]) else redis.call('SREM', KEYS[2], ARGV[1]) end
return 1
