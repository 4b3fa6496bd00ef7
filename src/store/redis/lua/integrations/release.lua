-- Gives a rule's delivery lease up if ARGV[1] holds it
-- (IntegrationStore::release). KEYS[1] the lease. Returns 1 when released.

if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
