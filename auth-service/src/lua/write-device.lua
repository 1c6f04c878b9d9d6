-- keys: 3
-- Registers or updates a device record and, in the same step, its listing indexes: the
-- type, tag and location sets it belongs to (scored by registration time) with their
-- values-in-use sets, and the maintenance index. Atomic, so a listing never sees a device
-- under a value its record no longer has.
-- KEYS: device record, devices (id → registration ms), maintenance index (id → maintenance_until ms).
-- ARGV[1]: 'register' or 'update'; ARGV[2]: device id; ARGV[3]: now (unix ms);
-- ARGV[4]: JSON {type|tag|location: {prefix: index key without its value, values: values-in-use set}};
-- ARGV[5]: JSON object of record fields to set (strings; tags as a JSON array); ARGV[6]: JSON array of fields to delete.
-- Register returns the registration time (created_at, the score in every listing index), or
-- 'exists' when the id is taken. Update returns 'ok', 'missing', or the status of a device that
-- is not active (a revoked device keeps the metadata it had).
local id = ARGV[2]
local layout = cjson.decode(ARGV[4])
local set = cjson.decode(ARGV[5])
local unsetting = {}
for _, f in ipairs(cjson.decode(ARGV[6])) do unsetting[f] = true end

local function values_of(type_, location, tags)
  local v = { type = {}, location = {}, tag = {} }
  if type_ then v.type[1] = type_ end
  if location and location ~= '' then v.location[1] = location end
  if tags then v.tag = cjson.decode(tags) end
  return v
end

local old, score, current
if ARGV[1] == 'register' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return 'exists' end
  -- The registration time is unique and later than every other device's (now, or 1 ms after
  -- the newest when several register within one ms): a device registered while someone
  -- pages the listing then always sorts after their cursor, never beside it.
  local t = tonumber(ARGV[3])
  local newest = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  if newest[2] and tonumber(newest[2]) >= t then t = tonumber(newest[2]) + 1 end
  score = string.format('%d', t)
  set.created_at, set.updated_at, set.key_created_at = score, score, score
  old = values_of(nil, nil, nil)
  current = {}
else
  current = redis.call('HMGET', KEYS[1], 'status', 'type', 'location', 'tags')
  if not current[1] then return 'missing' end
  if current[1] ~= 'active' then return current[1] end
  score = redis.call('ZSCORE', KEYS[2], id) or redis.call('HGET', KEYS[1], 'created_at')
  old = values_of(current[2], current[3], current[4])
  current = { type = current[2], location = current[3], tags = current[4] }
end

local function after(field)
  if set[field] ~= nil then return set[field] end
  if unsetting[field] then return nil end
  return current[field]
end
local new = values_of(after('type'), after('location'), after('tags'))

for kind, spec in pairs(layout) do
  local keep = {}
  for _, v in ipairs(new[kind]) do
    keep[v] = true
    redis.call('ZADD', spec.prefix .. v, score, id)
    redis.call('SADD', spec.values, v)
  end
  for _, v in ipairs(old[kind]) do
    if not keep[v] then
      local key = spec.prefix .. v
      redis.call('ZREM', key, id)
      if redis.call('EXISTS', key) == 0 then redis.call('SREM', spec.values, v) end
    end
  end
end

if set.maintenance_until ~= nil then
  redis.call('ZADD', KEYS[3], set.maintenance_until, id)
elseif unsetting.maintenance_until then
  redis.call('ZREM', KEYS[3], id)
end

local pairs_ = {}
for f, v in pairs(set) do
  pairs_[#pairs_ + 1] = f
  pairs_[#pairs_ + 1] = v
end
if #pairs_ > 0 then redis.call('HSET', KEYS[1], unpack(pairs_)) end
for f in pairs(unsetting) do redis.call('HDEL', KEYS[1], f) end
if ARGV[1] == 'register' then
  redis.call('ZADD', KEYS[2], score, id)
  return score
end
return 'ok'
