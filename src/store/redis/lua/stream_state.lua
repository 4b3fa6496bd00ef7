-- State of one event stream, for a reader (re)starting on it.
-- ARGV[4] shard. Returns {exists, last-generated-id, max-deleted-entry-id}.

local key = k_events(tonum(ARGV[4]))
if rcall('EXISTS', key) == 0 then return { 0, '0-0', '0-0' } end
local info = rcall('XINFO', 'STREAM', key)
local last, deleted = '0-0', '0-0'
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last = info[i + 1] end
  if info[i] == 'max-deleted-entry-id' then deleted = info[i + 1] end
end
return { 1, last, deleted }
