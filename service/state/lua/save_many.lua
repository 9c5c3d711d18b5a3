-- save_many: compare-and-set every row of a batch on its version, in one call.
-- ARGV[4] rows; per row: id, expected version, new position, the new value (a placeholder header, then h and c).
-- Per row {status, payload}: 'ok' and the new header, 'conflict' and the current header, or 'gone' and why.
local out = {0, 0}
local n = tonumber(ARGV[4])
for i = 0, n - 1 do
  local b = 5 + i * 4
  local id = ARGV[b]
  local v, why = live(id)
  if not v then
    out[#out + 1] = 'gone'
    out[#out + 1] = why
  else
    local magic, layers, hidden, version, _, created, _, _, ttl = struct.unpack(FMT, v)
    if version ~= tonumber(ARGV[b + 1]) then
      out[#out + 1] = 'conflict'
      out[#out + 1] = v
    else
      local header = struct.pack(FMT, magic, layers, hidden, version + 1, tonumber(ARGV[b + 2]), created, NOW,
                                 NOW + ttl, ttl)
      write(id, header, ARGV[b + 3], ttl)
      out[#out + 1] = 'ok'
      out[#out + 1] = header
    end
  end
end
out[1] = reaped
out[2] = evicted
return out
