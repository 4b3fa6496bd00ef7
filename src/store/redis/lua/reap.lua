-- One round of expiry work, safe to run from every replica at once.
-- ARGV[4] attachment budget, ARGV[5] a token to reap ('' for any).
-- Retires every session whose lease ran out (up to 1,000 a round), then
-- purges up to the budget of connections of retired tokens.
-- Returns {sessions retired, connections purged, 1 if work remains}.

local budget = tonum(ARGV[4])
local only = ARGV[5]
local retired = 0
if only == '' then
  local expired = rcall('ZRANGE', K_LEASES, '-inf', NOW, 'BYSCORE', 'LIMIT', 0, 1000)
  for _, tok in ipairs(expired) do
    retire(tok)
    retired = retired + 1
  end
end
local purged = 0
local more = 0
while budget > 0 do
  local tok = only
  if tok == '' then
    tok = rcall('SRANDMEMBER', K_REAPING)
    if not tok then break end
  end
  local n, done = reap_token(tok, budget)
  purged = purged + n
  budget = budget - n
  if only ~= '' and done then break end
  if not done and budget <= 0 then more = 1 end
end
if only == '' and rcall('SCARD', K_REAPING) > 0 then more = 1 end
if only == '' and retired == 1000 then more = 1 end
finish()
return { retired, purged, more }
