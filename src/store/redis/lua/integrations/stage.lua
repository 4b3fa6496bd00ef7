-- Records a batch before its first request (IntegrationStore::stage), if
-- the rule still exists: a worker that staged after the rule was deleted
-- would leave the staged hash behind for good.
-- KEYS[1] the rules, KEYS[2] the rule's staged batches. ARGV[1] the rule
-- id, ARGV[2] the batch id, ARGV[3] the batch (JSON). Returns 1 when
-- staged.

if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
