-- Extends a session's lease, or opens a new empty one.
-- ARGV[4] session id, ARGV[5] new lease ms (0: keep the current one),
-- ARGV[6] default lease ms, ARGV[7] a new random token for the lease it
-- may open (see live_token in common.lua). Returns {status, ttl, token}:
-- status 1 the session was alive, 2 it was unknown or expired; token the
-- lease's epoch.

local ttl = tonum(ARGV[5])
local tok = live_token(ARGV[4])
local alive = tok ~= nil
if alive then
  extend(tok)
else
  tok = ARGV[7]
  open_lease(ARGV[4], tok, ttl > 0 and ttl or tonum(ARGV[6]), 0)
end
if ttl > 0 then
  rcall('HSET', k_tok(tok), 'ttl', ttl)
  rcall('ZADD', K_LEASES, NOW + ttl, tok)
end
local t = tonum(rcall('HGET', k_tok(tok), 'ttl'))
finish()
if alive then return { 1, t, tok } end
return { 2, t, tok }
