-- Takes or renews a rule's delivery lease (IntegrationStore::lease).
-- KEYS[1] the lease. ARGV[1] the holder, ARGV[2] its time to live, ms.
-- Returns 1 when ARGV[1] holds the lease now, 0 when another holder does.

local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
