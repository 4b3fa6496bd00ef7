-- Ends a session now. ARGV[4] session id, ARGV[5] the caller's owner (''
-- with access control off). Returns the retired token (to be reaped by
-- the caller at once) and SESSION_ALIVE if the session was alive,
-- SESSION_UNKNOWN if not; or {false, SESSION_UNKNOWN} when it had no
-- token, or {false, SESSION_NOT_OWNER} when its live lease belongs to
-- another owner (nothing changed).

local tok = rcall('GET', k_sess(ARGV[4]))
if not tok then return { false, SESSION_UNKNOWN } end
local alive = lease_alive(tok)
if alive and owner_of(tok) ~= ARGV[5] then return { false, SESSION_NOT_OWNER } end
retire(tok)
if alive then return { tok, SESSION_ALIVE } end
return { tok, SESSION_UNKNOWN }
