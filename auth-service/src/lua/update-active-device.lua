-- keys: 1
-- KEYS: device hash. ARGV: revoke tokens (1/0), then field/value pairs. Updates only an
-- existing, active device. Revoking tokens raises the device's token generation in the same
-- step as the new key digest: every token signed before is refused at CONNECT (see
-- revocation.ts in common), and the exchange reads key digest and generation together.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status ~= 'active' then return status end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
if ARGV[1] == '1' then redis.call('HINCRBY', KEYS[1], 'token_gen', 1) end
return 'ok'
