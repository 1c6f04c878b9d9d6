-- keys: variable
-- Stores a batch of telemetry messages in one round trip (device-service/src/telemetry.ts explains the layout).
-- Message i uses KEYS[3i-2] (its device's record), KEYS[3i-1] (its stream), KEYS[3i] (its latest-readings hash).
-- ARGV: max_len, max_age_ms, cutoff_ms (older is not kept), max_names (latest hash), dedupe_scan, then per message:
--   received_at, cid, at, readings (JSON), n, then n pairs: reading name, its latest-value JSON (holds received_at).
-- Returns one outcome per message, in order: stored, duplicate, unknown_device or expired.
local max_len, max_age_ms, cutoff_ms = ARGV[1], ARGV[2], ARGV[3]
local cutoff, max_names, dedupe_scan = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])

-- The millisecond part of the stream's newest id, or nil for an empty stream.
local function newest_ms(stream)
  local top = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  if not top then return nil end
  return string.match(top[1], '^(%d+)-')
end

-- A message is always stored at its received_at or later (never earlier), so a copy of it,
-- if any, is among the entries from received_at on; a retry comes soon, so near the start.
local function already_stored(stream, received_at, cid)
  for _, entry in ipairs(redis.call('XRANGE', stream, received_at, '+', 'COUNT', dedupe_scan)) do
    local fields = entry[2]
    for j = 1, #fields, 2 do
      if fields[j] == 'c' and fields[j + 1] == cid then return true end
    end
  end
  return false
end

-- Keeps a reading as its name's latest value unless a newer one is kept; a device that keeps
-- inventing names loses its least recently reported one instead of growing the hash forever.
local function remember_latest(hash, name, value_json, received)
  local old = redis.call('HGET', hash, name)
  if old then
    if cjson.decode(old).received_at > received then return end
  elseif redis.call('HLEN', hash) >= max_names then
    local all = redis.call('HGETALL', hash)
    local stalest, stalest_at
    for j = 1, #all, 2 do
      local at = cjson.decode(all[j + 1]).received_at
      if stalest_at == nil or at < stalest_at then stalest, stalest_at = all[j], at end
    end
    if stalest_at > received then return end
    redis.call('HDEL', hash, stalest)
  end
  redis.call('HSET', hash, name, value_json)
end

local outcomes, streams, seen = {}, {}, {}
local a, i = 6, 0
while a <= #ARGV do
  i = i + 1
  local device, stream, latest = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local received_at, cid, at, readings, n = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], tonumber(ARGV[a + 4])
  local pairs_from = a + 5
  a = pairs_from + 2 * n
  local received = tonumber(received_at)
  local outcome
  if redis.call('HGET', device, 'status') ~= 'active' then
    outcome = 'unknown_device'
  elseif received < cutoff then
    outcome = 'expired'
  else
    local id_ms = received_at
    local fields = { 'c', cid, 'a', at, 'r', readings }
    local top = newest_ms(stream)
    if top and tonumber(top) >= received then
      if already_stored(stream, received_at, cid) then
        outcome = 'duplicate'
      elseif tonumber(top) > received then
        -- Arrived behind a newer message: a stream only appends, so it goes after it,
        -- and keeps its own received_at in a field.
        id_ms = top
        fields[#fields + 1] = 't'
        fields[#fields + 1] = received_at
      end
    end
    if not outcome then
      redis.call('XADD', stream, id_ms .. '-*', unpack(fields))
      for j = 0, n - 1 do
        remember_latest(latest, ARGV[pairs_from + 2 * j], ARGV[pairs_from + 2 * j + 1], received)
      end
      redis.call('PEXPIRE', latest, max_age_ms)
      if not seen[stream] then
        seen[stream] = true
        streams[#streams + 1] = stream
      end
      outcome = 'stored'
    end
  end
  outcomes[i] = outcome
end

-- Once per stream and batch: trimming with ~ removes whole stream nodes, cheaply.
for _, stream in ipairs(streams) do
  redis.call('XTRIM', stream, 'MAXLEN', '~', max_len)
  redis.call('XTRIM', stream, 'MINID', '~', cutoff_ms)
  -- A device that goes quiet takes its telemetry with it once the newest message is too old.
  redis.call('PEXPIRE', stream, max_age_ms)
end
return outcomes
