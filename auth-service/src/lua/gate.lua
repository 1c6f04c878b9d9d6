-- keys: variable
-- (the caller passes the key count first: one lock hash, then two keys per window)
-- KEYS: the lock hash, then per window its sorted set and its exemption set.
-- ARGV: the lock's member, a unique attempt id, then per window: limit, window ms,
-- exempt member, exemption age ms. A lock in force or any full window that applies
-- refuses and records nothing; otherwise the attempt is recorded in every window that
-- applies. Returns {-1, 0} when allowed, or {index of the refusing window (0 = lock), retry-after ms}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lockedUntil = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if lockedUntil and lockedUntil > now then return {0, lockedUntil - now} end
local n = (#KEYS - 1) / 2
local applies = {}
for i = 1, n do
  local a = 3 + (i - 1) * 4
  local seen = tonumber(redis.call('ZSCORE', KEYS[i * 2 + 1], ARGV[a + 2]))
  applies[i] = not (seen and seen > now - tonumber(ARGV[a + 3]))
  if applies[i] then
    local limit, window = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    redis.call('ZREMRANGEBYSCORE', KEYS[i * 2], '-inf', now - window)
    if redis.call('ZCARD', KEYS[i * 2]) >= limit then
      local oldest = redis.call('ZRANGE', KEYS[i * 2], 0, 0, 'WITHSCORES')
      return {i, tonumber(oldest[2]) + window - now}
    end
  end
end
for i = 1, n do
  if applies[i] then
    redis.call('ZADD', KEYS[i * 2], now, ARGV[2])
    redis.call('PEXPIRE', KEYS[i * 2], tonumber(ARGV[3 + (i - 1) * 4 + 1]))
  end
end
return {-1, 0}
