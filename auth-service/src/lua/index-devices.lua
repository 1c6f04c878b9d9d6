-- keys: 3
-- Backfill: puts existing device records into the listing indexes their fields call for
-- (type, tag, location, revoked, maintenance), for records written before the indexes
-- existed. Only adds, and adds what the record says now, so it is idempotent and safe
-- beside live registrations and updates (each of those keeps its own entries exact).
-- KEYS: devices (id → registration ms), revoked index, maintenance index.
-- ARGV[1]: device record key prefix (the key without the id); ARGV[2]: layout JSON as in
-- write-device.lua; ARGV[3..]: device ids. Returns how many records were found.
local layout = cjson.decode(ARGV[2])
local found = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local r = redis.call('HMGET', ARGV[1] .. id, 'status', 'type', 'location', 'tags', 'maintenance_until', 'created_at')
  if r[1] then
    found = found + 1
    local score = redis.call('ZSCORE', KEYS[1], id) or r[6]
    local values = { type = {}, location = {}, tag = {} }
    if r[2] then values.type[1] = r[2] end
    if r[3] and r[3] ~= '' then values.location[1] = r[3] end
    if r[4] then values.tag = cjson.decode(r[4]) end
    for kind, spec in pairs(layout) do
      for _, v in ipairs(values[kind]) do
        redis.call('ZADD', spec.prefix .. v, score, id)
        redis.call('SADD', spec.values, v)
      end
    end
    if r[1] == 'revoked' then redis.call('ZADD', KEYS[2], score, id) end
    if r[5] and r[1] ~= 'revoked' then redis.call('ZADD', KEYS[3], r[5], id) end
  end
end
return found
