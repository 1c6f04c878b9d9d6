-- keys: 4
-- KEYS: revoked jti, revoked session, the generation's holder (a user's generation key, a
-- device's record, or a key that never exists), an extra key whose existence is reported
-- (the broker's flood penalty, or one that never exists).
-- ARGV: token type, the token's gen. Returns {revoked 0/1, device status or '', extra 0/1}.
local current, status = 0, ''
if ARGV[1] == 'device' then
  local d = redis.call('HMGET', KEYS[3], 'status', 'token_gen')
  status = d[1] or ''
  current = tonumber(d[2]) or 0
elseif ARGV[1] == 'user' then
  current = tonumber(redis.call('GET', KEYS[3])) or 0
end
local revoked = redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 or tonumber(ARGV[2]) < current
return { revoked and 1 or 0, status, redis.call('EXISTS', KEYS[4]) }
