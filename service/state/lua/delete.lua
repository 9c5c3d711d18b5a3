-- delete: a live session removed with its marker (the client is then told "not found").
-- ARGV[4] id.
local id = ARGV[4]
local v, why = live(id)
if not v then return {reaped, evicted, 'gone', why} end
remove(id, 'deleted')
return {reaped, evicted, 'ok', ''}
