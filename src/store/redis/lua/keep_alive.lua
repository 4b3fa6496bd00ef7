-- Extends a session's lease, or opens a new empty one.
-- ARGV[4] session id, ARGV[5] new lease ms (0: keep the current one),
-- ARGV[6] default lease ms, ARGV[7] a new random token for the lease it
-- may open (see live_token in leases.lua), ARGV[8] the caller's owner
-- ('' with access control off). Returns {status, ttl, token}: status
-- SESSION_ALIVE or SESSION_UNKNOWN (unknown or expired), token the
-- lease's epoch; or {SESSION_NOT_OWNER, 0, false} when the live lease
-- belongs to another owner (nothing changed).

local ttl = tonum(ARGV[5])
local tok = live_token(ARGV[4])
local alive = tok ~= nil
if alive and owner_of(tok) ~= ARGV[8] then
  finish()
  return { SESSION_NOT_OWNER, 0, false }
end
if alive then
  extend(tok)
else
  tok = ARGV[7]
  open_lease(ARGV[4], tok, ttl > 0 and ttl or tonum(ARGV[6]), 0, ARGV[8])
end
if ttl > 0 then
  rcall('HSET', k_tok(tok), 'ttl', ttl)
  rcall('ZADD', K_LEASES, NOW + ttl, tok)
end
local t = tonum(rcall('HGET', k_tok(tok), 'ttl'))
finish()
if alive then return { SESSION_ALIVE, t, tok } end
return { SESSION_UNKNOWN, t, tok }
