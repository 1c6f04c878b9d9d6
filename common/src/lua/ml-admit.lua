-- keys: 3
-- Admits one ML request where it enters the queue (contracts/ml.json): the quota, then
-- the request record and its deadline, in one step.
-- KEYS: quota counter, request record, deadlines zset
-- ARGV: quota limit, quota window ms, device_id, cid, model, received_at, deadline_at,
--       job id, ms the record outlives its deadline
-- Returns 'admitted', 'rate_limited', or the state of an existing record with this job id
-- ('pending' | 'answered'): a QoS 1 retransmission of a request already admitted.
local state = redis.call('HGET', KEYS[2], 'state')
if state then return state end
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) then return 'rate_limited' end
redis.call('HSET', KEYS[2], 'device_id', ARGV[3], 'cid', ARGV[4], 'model', ARGV[5],
  'received_at', ARGV[6], 'deadline_at', ARGV[7], 'state', 'pending')
redis.call('PEXPIREAT', KEYS[2], tonumber(ARGV[7]) + tonumber(ARGV[9]))
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[8])
return 'admitted'
