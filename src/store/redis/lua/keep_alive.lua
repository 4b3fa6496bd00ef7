-- Extends a session's lease, or opens a new empty one.
-- ARGV[4] session id, ARGV[5] new lease ms (0: keep the current one),
-- ARGV[6] default lease ms. Returns {status, ttl}: status 1 the session was
-- alive, 2 it was unknown or expired.

local ttl = tonum(ARGV[5])
local tok, alive = open_session(ARGV[4], ttl > 0 and ttl or tonum(ARGV[6]))
if ttl > 0 then
  rcall('HSET', k_tok(tok), 'ttl', ttl)
  rcall('ZADD', K_LEASES, NOW + ttl, tok)
end
local t = tonum(rcall('HGET', k_tok(tok), 'ttl'))
finish()
if alive then return { 1, t } end
return { 2, t }
