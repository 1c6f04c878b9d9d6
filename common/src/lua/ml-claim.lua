-- keys: 2
-- Claims the one answer of an ML request: the first caller (a result, an error or the
-- deadline) turns the record from pending to answered and gets it; every later caller
-- gets nil, so each cid is answered exactly once whichever bridge sees what first.
-- KEYS: request record, deadlines zset
-- ARGV: job id, outcome (ok | error code)
-- Returns {device_id, cid, model, received_at, deadline_at} or nil.
redis.call('ZREM', KEYS[2], ARGV[1])
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'pending' then return nil end
redis.call('HSET', KEYS[1], 'state', 'answered', 'outcome', ARGV[2])
return redis.call('HMGET', KEYS[1], 'device_id', 'cid', 'model', 'received_at', 'deadline_at')
