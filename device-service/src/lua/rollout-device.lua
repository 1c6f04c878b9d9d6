-- keys: 3
-- KEYS: rollout hash, rollout devices hash, rollout deadlines (sorted set).
-- ARGV: device id, new state, at (unix ms), reason ('' none), deadline (unix ms; '0' leaves it).
-- Moves one device of a rollout forward: pending → offered → downloading → verifying →
-- rebooting → a final state (succeeded, failed, refused, rolled_back, timed_out). A device
-- never moves back nor out of a final state, so a repeated or late event (at-least-once
-- delivery) changes nothing. The rollout's counts per state and per wave (fields
-- `c:<state>`, `w<wave>:<state>`) move in the same step. A device entry is
-- `state|wave|at|reason`. Returns 'applied', 'stale' or 'unknown' (not a target).
local RANK = { pending = 0, offered = 1, downloading = 2, verifying = 3, rebooting = 4,
  succeeded = 5, failed = 5, refused = 5, rolled_back = 5, timed_out = 5, skipped = 5 }
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if not cur then return 'unknown' end
local state, wave = string.match(cur, '^([^|]*)|([^|]*)|')
local new = ARGV[2]
if RANK[new] == nil or RANK[new] <= RANK[state] then return 'stale' end
redis.call('HINCRBY', KEYS[1], 'c:' .. state, -1)
redis.call('HINCRBY', KEYS[1], 'c:' .. new, 1)
redis.call('HINCRBY', KEYS[1], 'w' .. wave .. ':' .. state, -1)
redis.call('HINCRBY', KEYS[1], 'w' .. wave .. ':' .. new, 1)
redis.call('HSET', KEYS[1], 'updated_at', ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], new .. '|' .. wave .. '|' .. ARGV[3] .. '|' .. ARGV[4])
if RANK[new] == 5 then
  redis.call('ZREM', KEYS[3], ARGV[1])
elseif ARGV[5] ~= '0' then
  redis.call('ZADD', KEYS[3], tonumber(ARGV[5]), ARGV[1])
end
return 'applied'
