-- Ends a session now. ARGV[4] session id. Returns the retired token (to be
-- reaped by the caller at once) and 1 if the session was alive, or
-- {false, 0} when it had no token.

local tok = rcall('GET', k_sess(ARGV[4]))
if not tok then return { false, 0 } end
local alive = lease_alive(tok)
retire(tok)
if alive then return { tok, 1 } end
return { tok, 0 }
