-- create: a new session, after making room for it (sweep, then evict the least recently used idle session).
-- ARGV[4] max sessions, [5] evict idle after, [6] id, [7] the whole value (its header included), [8] ttl,
-- [9] the most sessions the id's owner may hold (0: no limit), checked here so that replicas cannot both pass it.
if over_owned(ARGV[6], tonumber(ARGV[9])) then return {reaped, evicted, 'owned', ''} end
local frees = make_room(tonumber(ARGV[4]), tonumber(ARGV[5]), '')
if frees then return {reaped, evicted, 'full', tostring(frees - NOW)} end
local id = ARGV[6]
if redis.call('EXISTS', skey(id)) == 1 or redis.call('EXISTS', gkey(id)) == 1 then
  return {reaped, evicted, 'taken', ''}
end
write(id, nil, ARGV[7], tonumber(ARGV[8]))
own(id)
return {reaped, evicted, 'ok', ''}
