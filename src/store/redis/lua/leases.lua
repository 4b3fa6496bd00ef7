-- Session leases: a session id maps to its current token, whose deadline
-- (Redis clock, ms) is its score in K_LEASES.

-- A live token's deadline (a number, so true as a condition), or false.
local function lease_alive(tok)
  local d = rcall('ZSCORE', K_LEASES, tok)
  d = d and tonum(d)
  return d and d > NOW and d
end

-- Takes a session's token out of service: its lease ends and its remaining
-- connections are left to the reapers (or to the next writer that claims
-- them). The session name is freed for a new token.
local function retire(tok)
  rcall('ZREM', K_LEASES, tok)
  rcall('SADD', K_REAPING, tok)
  local s = rcall('HGET', k_tok(tok), 's')
  if s and rcall('GET', k_sess(s)) == tok then
    rcall('DEL', k_sess(s))
  end
end

-- The session's live token and its deadline, or nil; a token whose lease
-- ran out is retired on the way.
--
-- A token is also the lease's epoch, reported to the front end: the
-- caller picks a new one at random (a 64-bit number in decimal) for each
-- lease it may open, so tokens never repeat, even after Redis lost its
-- data (a counter kept in Redis would start again).
local function live_token(session)
  local tok = rcall('GET', k_sess(session))
  -- (a missing key reads as false)
  if not tok then return nil end
  local deadline = lease_alive(tok)
  if not deadline then
    retire(tok)
    return nil
  end
  return tok, deadline
end

-- Extends a live token's lease by its own length.
local function extend(tok)
  local t = tonum(rcall('HGET', k_tok(tok), 'ttl'))
  rcall('ZADD', K_LEASES, NOW + t, tok)
end

-- Opens a lease for the session under the new token tok, with the lease
-- length ttl, the batch sequence seq and its owner (the credential's key
-- id; '' with access control off, then not stored).
local function open_lease(session, tok, ttl, seq, owner)
  rcall('SET', k_sess(session), tok)
  if owner ~= '' then
    rcall('HSET', k_tok(tok), 's', session, 'ttl', ttl, 'q', seq, 'o', owner)
  else
    rcall('HSET', k_tok(tok), 's', session, 'ttl', ttl, 'q', seq)
  end
  rcall('ZADD', K_LEASES, NOW + ttl, tok)
end

-- The owner of a token's lease ('' when none was recorded), read once per
-- call.
local OWNERS = {}
local function owner_of(tok)
  local o = OWNERS[tok]
  if o == nil then
    o = rcall('HGET', k_tok(tok), 'o') or ''
    OWNERS[tok] = o
  end
  return o
end
