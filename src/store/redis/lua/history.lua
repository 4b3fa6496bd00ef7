-- Changes of one event stream after a position, and whether entries after
-- it were trimmed or lost. ARGV[4] shard, ARGV[5] position 'ms-seq',
-- ARGV[6] limit (entries). Returns {gap, {id, channel, id, channel, ...},
-- more}.

local key = k_events(tonum(ARGV[4]))
local after = ARGV[5]
local limit = tonum(ARGV[6])

local exists, last, deleted = stream_ids(key)
if not exists then
  -- no stream: nothing happened, or it was lost with Redis' data
  if after == '0-0' then return { 0, {}, 0 } end
  return { 1, {}, 0 }
end
local gap = 0
if id_after(deleted, after) or id_after(after, last) then gap = 1 end
local entries = rcall('XRANGE', key, '(' .. after, '+', 'COUNT', limit + 1)
local flat = {}
local more = 0
for i, e in ipairs(entries) do
  if i > limit then
    more = 1
    break
  end
  -- an entry holds one batch's changes of this shard: field the channel,
  -- value its counters
  local fields = e[2]
  for j = 1, #fields, 2 do
    flat[#flat + 1] = e[1]
    flat[#flat + 1] = fields[j]
  end
end
return { gap, flat, more }
