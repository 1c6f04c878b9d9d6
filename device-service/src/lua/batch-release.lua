-- keys: 2
-- KEYS: sending index, batch hash. ARGV: batch id, node, '1' every command is sent | '0' stopping early.
-- Gives up the right to send a batch, if `node` holds it: a batch whose commands are all
-- sent leaves the index; one left unfinished (the node drains) is free to any node at once.
if redis.call('HGET', KEYS[2], 'sender') ~= ARGV[2] then return 0 end
if ARGV[3] == '1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], 'XX', 0, ARGV[1])
end
return 1
