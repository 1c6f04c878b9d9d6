-- keys: 2
-- KEYS: sending index, batch hash. ARGV: batch id, node, now (unix ms), lease (ms).
-- Takes or renews the right to send a batch's commands. The node holding it renews it
-- while it sends; it is free to any node once its lease ran out (the node died) or was
-- given back (the node drained). Returns 1 when `node` holds it now, else 0 (another node
-- holds it, or every command of the batch is sent).
local lease = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not lease then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
if redis.call('HGET', KEYS[2], 'sender') ~= ARGV[2] and tonumber(lease) > tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[1])
redis.call('HSET', KEYS[2], 'sender', ARGV[2])
return 1
