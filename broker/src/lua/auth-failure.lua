-- keys: 2
-- Counts a failed authentication. KEYS: the address's failure counter, its ban.
-- ARGV: ban ms (also the counter's window), failures before a ban.
-- Returns 1 when this failure started a ban (the counter starts over), else 0.
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if n >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
