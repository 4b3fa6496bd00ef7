-- Queues the events of dead letters again, at the queue's end, and removes
-- those letters (IntegrationStore::replay), in one step so that a letter is
-- neither lost nor replayed twice by concurrent calls.
-- KEYS[1] the rule's dead letters, KEYS[2] its queue. ARGV: the batch ids
-- of the letters to replay (none: every letter). Returns the number of
-- entries queued.
--
-- Letters are the JSON of integrations::DeadLetter (serde field names).
-- cjson reads numbers as doubles: exact for the u32 metrics and for commit
-- times below 2^53 ms (some 285,000 years), which are written back as
-- integers with %.0f.

local rcall = redis.call
local sformat = string.format
local CATEGORIES = {
  'connections', 'publishers', 'subscribers', 'presenceConnections', 'presenceMembers',
  'presenceSubscribers', 'objectPublishers', 'objectSubscribers', 'presenceClients',
}
local CODES = { ['channel.occupancy'] = 'o', ['channel.occupied'] = '+', ['channel.vacated'] = '-' }

local every = #ARGV == 0
local wanted = {}
for i = 1, #ARGV do wanted[ARGV[i]] = true end

-- first every decision, then the writes: a script that fails half way
-- keeps what it wrote
local letters = rcall('LRANGE', KEYS[1], 0, -1)
local keep, adds = {}, {}
for _, raw in ipairs(letters) do
  local letter = cjson.decode(raw)
  if every or wanted[letter.batch.id] then
    for _, e in ipairs(letter.batch.entries) do
      local m = {}
      for i, name in ipairs(CATEGORIES) do m[i] = sformat('%.0f', e.metrics[name]) end
      local code = CODES[e.kind]
      if code == nil then return redis.error_reply('dead letter with an unknown event kind') end
      adds[#adds + 1] = { 'c', e.channel, 'k', code, 'f', e.flip and '1' or '0',
        'm', table.concat(m, ','), 't', sformat('%.0f', e.timestamp_ms) }
    end
  else
    keep[#keep + 1] = raw
  end
end

if #keep < #letters then
  rcall('DEL', KEYS[1])
  for i = 1, #keep, 1000 do
    rcall('RPUSH', KEYS[1], unpack(keep, i, math.min(i + 999, #keep)))
  end
end
for _, a in ipairs(adds) do
  rcall('XADD', KEYS[2], '*', unpack(a))
end
return #adds
