-- The start of every script (the loader puts it before each script's own body).
--
-- Every script: ARGV[1] key prefix, ARGV[2] the caller's clock (Unix seconds), ARGV[3] how long markers outlive
-- states; then its own arguments. Every script returns {ttl evictions, capacity evictions, ...}: each removal is
-- counted by the one script that made it, so the replicas' counters add up to the fleet's evictions.
--
-- FMT and HLEN describe the session header as service/state/redis.py packs it (HEADER, LUA_HEADER there): magic,
-- layers, hidden as uint32; version, position, created_at, last_used_at, expires_at, ttl_s as float64, all
-- little-endian, 60 bytes. A test checks that the two agree.
local P = ARGV[1]
local NOW = tonumber(ARGV[2])
local GRACE = tonumber(ARGV[3])
local FMT = '<c4I4I4dddddd'
local HLEN = 60
local EXP = P .. ':exp'
local LRU = P .. ':lru'
local reaped = 0
local evicted = 0

local function skey(id) return P .. ':s:' .. id end
local function gkey(id) return P .. ':seen:' .. id end
-- The set of an API key's live sessions (ids `<owner>.<random>`; ids without an owner are in none).
local function okey(id)
  local owner = string.match(id, '^(.+)%.')
  if owner then return P .. ':own:' .. owner end
  return nil
end
local function own(id)
  local k = okey(id)
  if k then redis.call('SADD', k, id) end
end
local function disown(id)
  local k = okey(id)
  if k then redis.call('SREM', k, id) end
end
-- True when the owner of `id` already holds `max` sessions (max 0, or an id without an owner: no limit).
local function over_owned(id, max)
  local k = okey(id)
  return k ~= nil and max > 0 and redis.call('SCARD', k) >= max
end
local function ms(s) return math.max(1, math.ceil(s * 1000)) end

local function remove(id, reason)
  redis.call('DEL', skey(id))
  redis.call('ZREM', EXP, id)
  redis.call('ZREM', LRU, id)
  disown(id)
  if reason == 'deleted' then
    redis.call('DEL', gkey(id))
  elseif reason == 'capacity' and redis.call('EXISTS', gkey(id)) == 1 then
    redis.call('SET', gkey(id), 'capacity', 'KEEPTTL')
  end
end

-- Why a session has no state: its marker's reason, or 'missing'. A state Redis expired by itself is still in the
-- index: take it out and count it as a ttl eviction (only the first script to do so counts it).
local function gone(id)
  if redis.call('ZREM', EXP, id) == 1 then
    redis.call('ZREM', LRU, id)
    disown(id)
    reaped = reaped + 1
  end
  local reason = redis.call('GET', gkey(id))
  if reason then return reason end
  return 'missing'
end

-- The session's header (`whole`: its whole value), or nil and why not; a session idle past its TTL by the
-- caller's clock is removed here. Reading the header alone spares copying the state into Lua.
local function live(id, whole)
  local v
  if whole then v = redis.call('GET', skey(id)) else v = redis.call('GETRANGE', skey(id), 0, HLEN - 1) end
  if not v or v == '' then return nil, gone(id) end
  local _, _, _, _, _, _, _, expires = struct.unpack(FMT, v)
  if expires <= NOW then
    remove(id, 'ttl')
    reaped = reaped + 1
    return nil, 'ttl'
  end
  return v, nil
end

-- `value` is a whole value whose first HLEN bytes are then overwritten by `header`: SET + SETRANGE in place,
-- cheaper than building header .. state in Lua (a copy of the state, measured at ~10 us per 8 KiB row).
local function write(id, header, value, ttl)
  redis.call('SET', skey(id), value, 'PX', ms(ttl))
  if header then redis.call('SETRANGE', skey(id), 0, header) end
  redis.call('SET', gkey(id), 'ttl', 'PX', ms(ttl + GRACE))
  redis.call('ZADD', EXP, NOW + ttl, id)
  redis.call('ZADD', LRU, NOW, id)
end

-- Room for one more session: sweep the expired, then evict least-recently-used sessions idle at least `idle`
-- seconds (never `protect`). Returns nil when there is room, else when a slot frees (Unix seconds, maybe inf).
local function make_room(max, idle, protect)
  local n = redis.call('ZCARD', EXP)
  if n < max then return nil end
  local due = redis.call('ZRANGEBYSCORE', EXP, '-inf', NOW, 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do
    if id ~= protect then
      remove(id, 'ttl')
      reaped = reaped + 1
      n = n - 1
    end
  end
  for _ = 1, 100 do
    if n < max then return nil end
    local lru = redis.call('ZRANGE', LRU, 0, 1, 'WITHSCORES')
    local id, used = lru[1], tonumber(lru[2])
    if id == protect then id, used = lru[3], tonumber(lru[4]) end
    if id == nil or NOW - used < idle then
      local frees = math.huge
      if used then frees = used + idle end
      local first = redis.call('ZRANGE', EXP, 0, 0, 'WITHSCORES')
      if first[2] then frees = math.min(frees, tonumber(first[2])) end
      return frees
    end
    remove(id, 'capacity')
    evicted = evicted + 1
    n = n - 1
  end
  return math.huge
end
