-- keys: 3
-- Applies one presence event if it is newer than the last one applied (by the broker's
-- per-device seq), so a late or re-sent event never overrides a newer one.
-- KEYS: device record, device state, online index. ARGV: device id, online (1/0), seq, at, node.
-- Returns 0 unknown device (nothing written), 1 stale (seq not newer), 2 applied.
local registered = redis.call('HGET', KEYS[1], 'created_at')
if not registered then return 0 end
local stored = tonumber(redis.call('HGET', KEYS[2], 'presence_seq'))
if stored and tonumber(ARGV[3]) <= stored then return 1 end
redis.call('HSET', KEYS[2], 'online', ARGV[2], 'presence_seq', ARGV[3], 'presence_at', ARGV[4], 'presence_node', ARGV[5])
if ARGV[2] == '1' then
  redis.call('ZADD', KEYS[3], tonumber(registered) or 0, ARGV[1])
else
  redis.call('ZREM', KEYS[3], ARGV[1])
end
return 2
