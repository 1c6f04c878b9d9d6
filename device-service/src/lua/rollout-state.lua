-- keys: 2
-- KEYS: rollout hash, active rollouts (sorted set).
-- ARGV: rollout id, allowed current states (comma-separated), new state, now (unix ms), abort reason ('' none).
-- Compare-and-set of a rollout's state. A rollout that ends (completed, aborted, cancelled)
-- leaves the active set, so no node ticks it again. Returns 'ok', or the current state
-- when the transition is not allowed from it ('' for an unknown rollout).
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return '' end
local allowed = false
for s in string.gmatch(ARGV[2], '[^,]+') do
  if s == state then allowed = true end
end
if not allowed then return state end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'updated_at', ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'abort_reason', ARGV[5]) end
if ARGV[3] == 'completed' or ARGV[3] == 'aborted' or ARGV[3] == 'cancelled' then
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 'ok'
