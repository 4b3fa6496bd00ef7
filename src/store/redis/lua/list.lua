-- One page of active channels. ARGV[4] order ('n' by name, 'c' busiest
-- first), ARGV[5] index key to start from ('' for the beginning), ARGV[6]
-- '1' if that key is included, ARGV[7] upper bound for the name index
-- ('+' or '(' followed by the first name past the prefix), ARGV[8] the
-- prefix, ARGV[9] limit, ARGV[10] '1' to return metrics.
-- Returns {keys, counters, more}: up to limit index keys, the counters
-- of each as one string (packed_list, counters.lua; empty when not
-- asked), and 1 when more channels follow.

local order, start, incl, upper, prefix = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local limit = tonum(ARGV[9])
local with_metrics = ARGV[10] == '1'
local keys = {}
local more = 0

local function name_of(key)
  if order == 'c' then return ssub(key, BUSY_NAME_AT) end
  return key
end

if order == 'n' then
  local lower = '-'
  if start ~= '' then lower = (incl == '1' and '[' or '(') .. start end
  keys = rcall('ZRANGE', K_IDX_NAME, lower, upper, 'BYLEX', 'LIMIT', 0, limit + 1)
  if #keys > limit then
    more = 1
    keys[#keys] = nil
  end
else
  -- Busiest first: walk the busy index, keeping names under the prefix.
  -- With a prefix, the cost grows with the busier channels outside it.
  local lower = '-'
  if start ~= '' then lower = '(' .. start end
  local batch = mmax(limit + 1, 256)
  while true do
    local chunk = rcall('ZRANGE', K_IDX_BUSY, lower, '+', 'BYLEX', 'LIMIT', 0, batch)
    for _, k in ipairs(chunk) do
      if ssub(name_of(k), 1, #prefix) == prefix then
        if #keys == limit then
          more = 1
          break
        end
        keys[#keys + 1] = k
      end
    end
    if more == 1 or #chunk < batch then break end
    lower = '(' .. chunk[#chunk]
  end
end

local counters = ''
if with_metrics and #keys > 0 then
  local mk = {}
  for i, k in ipairs(keys) do mk[i] = k_metrics(name_of(k)) end
  counters = packed_list(call_list('MGET', mk, 0, #mk), #mk)
end
return { keys, counters, more }
