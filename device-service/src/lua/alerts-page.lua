-- keys: 1
-- KEYS: the active alerts (sorted set: device id → raised at, unix ms).
-- ARGV: page size, then the cursor: the raised_at and device id of the last item of the
-- previous page, or '' and '' for the first page.
-- Newest first; ties (a tick raises many at the same ms) are in device id order, descending,
-- as ZREVRANGE gives them. The page starts after the cursor's position even when its
-- alert was cleared since: among the members with the cursor's score, the first one below
-- its id is found by binary search over ranks (O(log n) each).
-- Returns {id, raised_at, id, raised_at, ...}.
-- Byte order, as Redis orders members: Lua's < on strings follows the server's locale.
local function before(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local limit = tonumber(ARGV[1])
local start = 0
if ARGV[2] ~= '' then
  local score, id = ARGV[2], ARGV[3]
  local lo = redis.call('ZCOUNT', KEYS[1], '(' .. score, '+inf')
  local hi = lo + redis.call('ZCOUNT', KEYS[1], score, score)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if not before(redis.call('ZREVRANGE', KEYS[1], mid, mid)[1], id) then lo = mid + 1 else hi = mid end
  end
  start = lo
end
return redis.call('ZREVRANGE', KEYS[1], start, start + limit - 1, 'WITHSCORES')
