-- keys: 7
-- Revokes a device: its key digest goes, its status becomes revoked (the first revocation's
-- time is kept), it joins the revoked index and leaves the maintenance index. It stays in
-- `devices` and its type, tag and location indexes: the listing shows revoked devices and
-- filters them by status. The device service's silence tracking lets it go: no heartbeat
-- will ever clear an alert of a revoked device, so it leaves the silent index, the active
-- alerts and the silence deadlines here.
-- KEYS: device record, devices (id → registration ms), revoked index, maintenance index,
--       silent index, active alerts, silence deadlines. ARGV: id, now (unix ms).
-- Returns 'missing' or 'ok'.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
redis.call('HDEL', KEYS[1], 'api_key_digest', 'maintenance_until')
if status ~= 'revoked' then redis.call('HSET', KEYS[1], 'status', 'revoked', 'revoked_at', ARGV[2]) end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1]) or redis.call('HGET', KEYS[1], 'created_at')
redis.call('ZADD', KEYS[3], score, ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('ZREM', KEYS[7], ARGV[1])
return 'ok'
