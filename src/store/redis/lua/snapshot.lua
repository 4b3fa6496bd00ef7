-- Counters of some channels and the last position of every event stream,
-- read atomically. ARGV[4..] channel names.
-- Returns {counters, {last id per shard}}: the channels' counters as one
-- string (packed_list, counters.lua).

local keys, n = {}, 0
for i = 4, #ARGV do
  n = n + 1
  keys[n] = k_metrics(ARGV[i])
end
local positions = {}
for s = 0, NSHARDS - 1 do
  local last = rcall('XREVRANGE', k_events(s), '+', '-', 'COUNT', 1)
  if last[1] then positions[#positions + 1] = last[1][1] else positions[#positions + 1] = '0-0' end
end
return { packed_list(call_list('MGET', keys, 0, n), n), positions }
