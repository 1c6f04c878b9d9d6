-- keys: 2
-- KEYS: the device record, the device's state hash.
-- ARGV: received_at (unix ms), rollout, state, window: a unix ms until which silence
-- alerts are muted, 'end' to end the mute, or '' to leave it as it is.
-- A status older than the one recorded (a retry or a reordered job) changes nothing.
-- Returns 'applied', 'stale', or 'unknown' (no such device, or revoked).
if redis.call('HGET', KEYS[1], 'status') ~= 'active' then return 'unknown' end
local at = tonumber(ARGV[1])
local recorded = tonumber(redis.call('HGET', KEYS[2], 'ota_at'))
if recorded and recorded > at then return 'stale' end
redis.call('HSET', KEYS[2], 'ota_rollout', ARGV[2], 'ota_state', ARGV[3], 'ota_at', at)
if ARGV[4] == 'end' then
  redis.call('HDEL', KEYS[2], 'ota_window_until')
elseif ARGV[4] ~= '' then
  redis.call('HSET', KEYS[2], 'ota_window_until', ARGV[4])
end
return 'applied'
