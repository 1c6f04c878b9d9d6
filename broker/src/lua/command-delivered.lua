-- keys: 1
-- KEYS: command hash. ARGV: now (unix ms), batch key prefix.
-- The device acknowledged its command: delivered_at is recorded once (also when its result
-- came first: the PUBACK can reach the broker after the result went through the queue), and
-- the state moves sent → delivered, only from sent, so a second PUBACK changes nothing.
-- The device service's scripts (device-service/src/lua/command-*.lua) own the rest of the
-- state machine and keep the same per-state counts in the command's batch.
local h = redis.call('HMGET', KEYS[1], 'state', 'batch', 'delivered_at')
if not h[1] then return 0 end
if not h[3] then redis.call('HSET', KEYS[1], 'delivered_at', ARGV[1]) end
if h[1] ~= 'sent' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'delivered')
if h[2] then
  -- Derived from the record, not passed: Fleetwire runs on one Redis (or Sentinel), never Redis Cluster.
  local batch = ARGV[2] .. h[2]
  if redis.call('EXISTS', batch) == 1 then
    redis.call('HINCRBY', batch, 'sent', -1)
    redis.call('HINCRBY', batch, 'delivered', 1)
  end
end
return 1
