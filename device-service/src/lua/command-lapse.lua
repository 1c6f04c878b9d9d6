-- keys: 2
-- KEYS: command hash, pending index. ARGV: cid, new state (timed_out | expired), now (unix ms),
-- batch key prefix, results channel.
-- A command's wait ended without a result: the HTTP request waiting for it gave up
-- (timed_out), or its expires_at passed (expired, by the expiry sweep). Only from sent or
-- delivered: a result that landed first wins. The command leaves the pending index either
-- way. Returns the previous state, or false when nothing changed.
redis.call('ZREM', KEYS[2], ARGV[1])
local h = redis.call('HMGET', KEYS[1], 'state', 'batch')
if h[1] ~= 'sent' and h[1] ~= 'delivered' then return false end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'finished_at', ARGV[3])
if h[2] then
  local batch = ARGV[4] .. h[2]
  if redis.call('EXISTS', batch) == 1 then
    redis.call('HINCRBY', batch, h[1], -1)
    redis.call('HINCRBY', batch, ARGV[2], 1)
  end
end
redis.call('PUBLISH', ARGV[5], ARGV[1])
return h[1]
