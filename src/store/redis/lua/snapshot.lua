-- Metrics of some channels and the last position of every event stream,
-- read atomically. ARGV[4..] channel names.
-- Returns {metrics per channel..., {last id per shard}}.

local keys = {}
for i = 4, #ARGV do keys[#keys + 1] = k_metrics(ARGV[i]) end
local out = {}
for i, v in ipairs(read_many('MGET', {}, keys)) do out[i] = parse_metrics(v) end
local positions = {}
for s = 0, NSHARDS - 1 do
  local last = rcall('XREVRANGE', k_events(s), '+', '-', 'COUNT', 1)
  if last[1] then positions[#positions + 1] = last[1][1] else positions[#positions + 1] = '0-0' end
end
out[#out + 1] = positions
return out
