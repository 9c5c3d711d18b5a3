-- sweep: remove the sessions due by the caller's clock.
-- ARGV[4] most ids to remove in this call. Returns {removed, 0, ids looked at}.
local due = redis.call('ZRANGEBYSCORE', EXP, '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(due) do
  remove(id, 'ttl')
  reaped = reaped + 1
end
return {reaped, evicted, #due}
