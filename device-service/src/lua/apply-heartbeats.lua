-- keys: 6
-- Applies a whole batch of heartbeats in one call: the consumer's one round trip per batch.
-- The rules and the state fields are described in heartbeats.ts and device-state.ts.
-- KEYS: silence-due zset, last-seen index zset, reboots zset, silent index zset,
--       active alerts zset, set of firmware versions in use.
-- ARGV: device record key prefix, device state key prefix, firmware index key prefix,
--       heartbeat lag key prefix, silence multiplier %, floor ms, ceiling ms, min history,
--       default interval ms, reboots kept ms, lag key ttl s,
--       then 7 per heartbeat: device id, received_at ms, fw, rssi, heap_free, uptime_s, seq.
-- Returns {now ms (Redis clock: when the batch was written), {code per heartbeat},
--          {per cleared silence: heartbeat index (1-based), previous last_seen, alert threshold ms}}.
-- Codes: 0 unknown or revoked device (nothing written), 1 stale (received_at <= last_seen:
-- a retry, a duplicate, out of order; or the stored seq and uptime_s again: the device resent
-- it; nothing written), 2 applied, 3 applied and a reboot seen.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local devicePrefix, statePrefix, fwPrefix, lagPrefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local multiplier = tonumber(ARGV[5]) / 100
local floorMs, ceilingMs = tonumber(ARGV[6]), tonumber(ARGV[7])
local minHistory = tonumber(ARGV[8])
local defaultIntervalMs = tonumber(ARGV[9])
local rebootsKeptMs, lagTtlS = tonumber(ARGV[10]), tonumber(ARGV[11])
local FIRST, PER = 12, 7

local function round(x) return math.floor(x + 0.5) end
local function clamp(x)
  x = round(x)
  if x < floorMs then return floorMs end
  if x > ceilingMs then return ceilingMs end
  return x
end
local defaultThreshold = clamp(multiplier * defaultIntervalMs)
local LOG2 = math.log(2)

local codes, cleared, lagCounts = {}, {}, {}
local count = (#ARGV - FIRST + 1) / PER

for i = 1, count do
  local a = FIRST + (i - 1) * PER
  local id, at, fw = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2]
  local uptime = tonumber(ARGV[a + 5])
  local device = redis.call('HMGET', devicePrefix .. id, 'status', 'created_at')
  local code = 0
  if device[1] == 'active' then
    local key = statePrefix .. id
    local s = redis.call('HMGET', key, 'last_seen', 'uptime_s', 'fw', 'interval_mean_ms', 'interval_dev_ms',
      'interval_n', 'interval_skips', 'threshold_ms', 'boot_count', 'silent_since', 'alert_threshold_ms', 'seq')
    local lastSeen = tonumber(s[1])
    -- The same seq and uptime as the stored heartbeat: the device sent it again (a QoS 1
    -- retransmission after a reconnect), which the broker queued with a new received_at.
    if lastSeen and (at <= lastSeen or (s[12] == ARGV[a + 6] and tonumber(s[2]) == uptime)) then
      code = 1
    else
      code = 2
      local mean, dev = tonumber(s[4]) or 0, tonumber(s[5]) or 0
      local learned, skips = tonumber(s[6]) or 0, tonumber(s[7]) or 0
      local threshold = tonumber(s[8]) or defaultThreshold
      local fields = { 'last_seen', at, 'fw', fw, 'rssi', ARGV[a + 3], 'heap_free', ARGV[a + 4], 'uptime_s', uptime, 'seq', ARGV[a + 6] }

      if lastSeen then
        local interval = at - lastSeen
        -- A gap longer than the threshold in force was a silence or an offline period, not the
        -- device's rhythm. While it is still warming up any gap up to the ceiling counts, or a
        -- device slower than the default interval could never learn its own.
        local limit = threshold
        if learned < minHistory then limit = ceilingMs end
        if interval <= limit then
          if learned == 0 then
            mean, dev = interval, interval / 2
          else
            -- RFC 6298's estimator: the deviation is updated with the previous mean.
            dev = dev + (math.abs(interval - mean) - dev) / 4
            mean = mean + (interval - mean) / 8
          end
          -- Whole ms, as stored: the threshold is then always a function of the stored values.
          mean, dev = round(mean), round(dev)
          learned, skips = learned + 1, 0
        else
          skips = skips + 1
          -- As many too-long gaps in a row as warming up takes: the device changed its rhythm
          -- (e.g. a new reporting interval), so learn it again from this gap on.
          if skips >= minHistory then mean, dev, learned, skips = interval, round(interval / 2), 1, 0 end
        end
        fields[#fields + 1] = 'interval_ms'; fields[#fields + 1] = interval
      end
      if learned >= minHistory then threshold = clamp(multiplier * mean + 4 * dev) else threshold = defaultThreshold end
      for _, v in ipairs({ 'interval_mean_ms', mean, 'interval_dev_ms', dev, 'interval_n', learned,
        'threshold_ms', threshold }) do fields[#fields + 1] = v end
      -- Fields that are usually 0 are kept only while they are not (absent reads as 0): bytes per device count.
      if skips > 0 then
        fields[#fields + 1] = 'interval_skips'; fields[#fields + 1] = skips
      elseif s[7] then
        redis.call('HDEL', key, 'interval_skips')
      end

      local previousUptime = tonumber(s[2])
      if previousUptime and uptime < previousUptime then
        code = 3
        -- When it booted, by its own uptime: more exact than when we heard of it.
        local bootedAt = at - uptime * 1000
        fields[#fields + 1] = 'boot_count'; fields[#fields + 1] = (tonumber(s[9]) or 0) + 1
        fields[#fields + 1] = 'last_reboot_at'; fields[#fields + 1] = bootedAt
        redis.call('ZADD', KEYS[3], bootedAt, id .. ':' .. bootedAt)
      end

      if s[3] ~= fw then
        local score = tonumber(device[2]) or 0
        if s[3] then
          local old = fwPrefix .. s[3]
          redis.call('ZREM', old, id)
          if redis.call('ZCARD', old) == 0 then redis.call('SREM', KEYS[6], s[3]) end
        end
        redis.call('ZADD', fwPrefix .. fw, score, id)
        redis.call('SADD', KEYS[6], fw)
      end

      if s[10] then
        -- The silence checker raised an alert; this heartbeat ends it.
        redis.call('HDEL', key, 'silent_since', 'alert_threshold_ms')
        redis.call('ZREM', KEYS[4], id)
        redis.call('ZREM', KEYS[5], id)
        cleared[#cleared + 1] = i
        cleared[#cleared + 1] = lastSeen or 0
        cleared[#cleared + 1] = tonumber(s[11]) or threshold
      end

      redis.call('HSET', key, unpack(fields))
      redis.call('ZADD', KEYS[1], at + threshold, id)
      redis.call('ZADD', KEYS[2], at, id)

      -- Log-spaced lag buckets, 4 per doubling: bucket b holds lags in [2^(b/4) - 1, 2^((b+1)/4) - 1) ms.
      local lag = now - at
      if lag < 0 then lag = 0 end
      local b = math.floor(4 * math.log(1 + lag) / LOG2)
      lagCounts[b] = (lagCounts[b] or 0) + 1
    end
  end
  codes[i] = code
end

local lagKey = lagPrefix .. math.floor(now / 60000)
local wroteLag = false
for b, n in pairs(lagCounts) do
  redis.call('HINCRBY', lagKey, b, n)
  wroteLag = true
end
if wroteLag then redis.call('EXPIRE', lagKey, lagTtlS) end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. (now - rebootsKeptMs))

return { now, codes, cleared }
