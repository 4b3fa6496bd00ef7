-- Moves a staged batch to the dead letters (IntegrationStore::kill): its
-- entries leave the queue, its stage goes, the letter is appended and the
-- oldest letters past the most kept are dropped. Nothing when the rule no
-- longer exists (it was deleted with its queue).
-- KEYS[1] the rules, KEYS[2] the rule's queue, KEYS[3] its staged batches,
-- KEYS[4] its dead letters. ARGV[1] the rule id, ARGV[2] the batch id,
-- ARGV[3] the letter (JSON), ARGV[4] the most letters kept, ARGV[5..] the
-- batch's entry ids. Returns 1 when the letter was added.

local rcall = redis.call
if rcall('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
-- XDEL in slices: unpack is bounded by the Lua stack
for i = 5, #ARGV, 1000 do
  rcall('XDEL', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
rcall('HDEL', KEYS[3], ARGV[2])
rcall('RPUSH', KEYS[4], ARGV[3])
rcall('LTRIM', KEYS[4], -tonumber(ARGV[4]), -1)
return 1
