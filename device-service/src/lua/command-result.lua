-- keys: 2
-- KEYS: command hash, pending index. ARGV: cid, device id (from the result's topic), now (unix ms),
-- new state (succeeded | failed | expired), ok ('1' | '0'), 'result' | 'error', its JSON,
-- batch key prefix, results channel.
-- Records a device's result, the first one only: queues are at-least-once and QoS 1
-- retransmits, so the same result (or another answer to the same cid) can come again and
-- then changes nothing. A result is recorded also after the HTTP wait gave up (timed_out)
-- or the expiry sweep did (expired, no result): then with late=1. The state change, the
-- batch counts and the wake-up of the waiting request (PUBLISH, whichever node waits) are
-- one step. Returns {outcome, previous state}; outcome: applied, duplicate, unknown (no
-- record: not our cid, or it expired), other-device (the cid belongs to another device).
local h = redis.call('HMGET', KEYS[1], 'device_id', 'state', 'ok', 'batch')
if not h[1] then return {'unknown', ''} end
if h[1] ~= ARGV[2] then return {'other-device', h[2]} end
if h[3] then return {'duplicate', h[2]} end
redis.call('HSET', KEYS[1], 'state', ARGV[4], 'ok', ARGV[5], ARGV[6], ARGV[7], 'finished_at', ARGV[3])
if h[2] == 'timed_out' or h[2] == 'expired' then redis.call('HSET', KEYS[1], 'late', '1') end
redis.call('ZREM', KEYS[2], ARGV[1])
if h[4] then
  -- Derived from the record, not passed: Fleetwire runs on one Redis (or Sentinel), never Redis Cluster.
  local batch = ARGV[8] .. h[4]
  if redis.call('EXISTS', batch) == 1 then
    redis.call('HINCRBY', batch, h[2], -1)
    redis.call('HINCRBY', batch, ARGV[4], 1)
  end
end
redis.call('PUBLISH', ARGV[9], ARGV[1])
return {'applied', h[2]}
