-- Stores an integration rule (IntegrationStore::put_rule).
-- KEYS[1] the rules, KEYS[2] their version. ARGV[1] the rule id, ARGV[2]
-- the rule (JSON), ARGV[3] '1' to create ('0' to replace), ARGV[4] the most
-- rules. Returns 'ok' (stored, version incremented), 'full' (creating past
-- the most rules) or 'missing' (replacing a rule that does not exist).

if ARGV[3] == '1' then
  if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then return 'full' end
elseif redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 'missing'
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[2])
return 'ok'
