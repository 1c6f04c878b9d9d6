-- keys: variable
-- (the caller passes the key count first)
-- KEYS: the silence-due index, the silent index, the active alerts, then per device its
-- record and its state hash, in the order of the ids in ARGV.
-- ARGV: now (unix ms), longest mute recheck (ms), then the device ids that were due.
-- Per id, atomically: an id whose due time moved past now (a heartbeat came) or that is
-- gone from the index (another checker took it) is left alone; an unknown or revoked
-- device, or one with no heartbeat state, leaves the index; a muted one (maintenance or an
-- OTA reboot window) is put back at the end of its mute, rechecked at least every
-- ARGV[2] ms so a mute ended early is noticed; any other one is raised, and the ZREM
-- from the due index is what makes it raised once, however many checkers run.
-- Returns {{id, last_seen, threshold_ms} of each raised device ..., muted, dropped, moved}.
local due, silent, active = KEYS[1], KEYS[2], KEYS[3]
local now = tonumber(ARGV[1])
local recheck = tonumber(ARGV[2])
local raised = {}
local muted, dropped, moved = 0, 0, 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local record, state = KEYS[4 + (i - 3) * 2], KEYS[5 + (i - 3) * 2]
  local dueAt = tonumber(redis.call('ZSCORE', due, id))
  if not dueAt or dueAt > now then
    moved = moved + 1
  else
    local d = redis.call('HMGET', record, 'status', 'created_at', 'maintenance_until')
    local s = redis.call('HMGET', state, 'last_seen', 'threshold_ms', 'ota_window_until', 'silent_since')
    local lastSeen, threshold = tonumber(s[1]), tonumber(s[2])
    if d[1] ~= 'active' or not lastSeen or not threshold or s[4] then
      -- s[4]: already raised (only a heartbeat clears it, and it re-adds the id itself).
      redis.call('ZREM', due, id)
      dropped = dropped + 1
    else
      local muteUntil = math.max(tonumber(d[3]) or 0, tonumber(s[3]) or 0)
      if muteUntil > now then
        redis.call('ZADD', due, math.min(muteUntil, now + recheck), id)
        muted = muted + 1
      else
        redis.call('HSET', state, 'silent_since', now, 'alert_threshold_ms', threshold)
        redis.call('ZADD', silent, tonumber(d[2]) or 0, id)
        redis.call('ZADD', active, now, id)
        redis.call('ZREM', due, id)
        raised[#raised + 1] = { id, lastSeen, threshold }
      end
    end
  end
end
return { raised, muted, dropped, moved }
