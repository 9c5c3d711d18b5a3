-- reset: a live session back to position 0 and zero state, its version bumped.
-- ARGV[4] id, [5] the new value: a placeholder header and zeros.
local id = ARGV[4]
local v, why = live(id)
if not v then return {reaped, evicted, 'gone', why} end
local magic, layers, hidden, version, _, created, _, _, ttl = struct.unpack(FMT, v)
local header = struct.pack(FMT, magic, layers, hidden, version + 1, 0, created, NOW, NOW + ttl, ttl)
write(id, header, ARGV[5], ttl)
return {reaped, evicted, 'ok', header}
