-- Ends a session now. ARGV[4] session id, ARGV[5] the caller's owner (''
-- with access control off). Returns the retired token (to be reaped by
-- the caller at once) and 1 if the session was alive, or {false, 0} when
-- it had no token, or {false, 3} when its live lease belongs to another
-- owner (nothing changed).

local tok = rcall('GET', k_sess(ARGV[4]))
if not tok then return { false, 0 } end
local alive = lease_alive(tok)
if alive and owner_of(tok) ~= ARGV[5] then return { false, 3 } end
retire(tok)
if alive then return { tok, 1 } end
return { tok, 0 }
