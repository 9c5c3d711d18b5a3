-- fork: a copy of a live session under a new id, after making room for it (never by evicting the source).
-- ARGV[4] max sessions, [5] evict idle after, [6] source id, [7] new id, [8] ttl or '' (the source's),
-- [9] the most sessions the owner may hold (0: no limit), checked here so that replicas cannot both pass it.
local src = ARGV[6]
local v, why = live(src, true)
if not v then return {reaped, evicted, 'gone', why} end
if over_owned(ARGV[7], tonumber(ARGV[9])) then return {reaped, evicted, 'owned', ''} end
local frees = make_room(tonumber(ARGV[4]), tonumber(ARGV[5]), src)
if frees then return {reaped, evicted, 'full', tostring(frees - NOW)} end
local id = ARGV[7]
if redis.call('EXISTS', skey(id)) == 1 or redis.call('EXISTS', gkey(id)) == 1 then
  return {reaped, evicted, 'taken', ''}
end
local magic, layers, hidden, _, position, _, _, _, ttl = struct.unpack(FMT, v)
if ARGV[8] ~= '' then ttl = tonumber(ARGV[8]) end
local header = struct.pack(FMT, magic, layers, hidden, 1, position, NOW, NOW, NOW + ttl, ttl)
write(id, header, v, ttl)
own(id)
return {reaped, evicted, 'ok', header}
