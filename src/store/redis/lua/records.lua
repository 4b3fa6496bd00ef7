-- Connection records. A connection's record is its field in the hash
-- K_CONNS: the owning token and the number of attachments ('TOK\tN'), then
-- per attachment '\nCHANNEL\tMODES' followed by '\tCLIENT' per presence
-- member of the connection on that channel. Names and ids hold no control
-- characters, so the separators cannot occur inside them; lookups are
-- plain substring searches, without decoding the record.
--
-- Hot paths below avoid helper calls and C functions where they can: in
-- Redis' Lua every call costs hundreds of instructions, every number
-- parsed or formatted a thousand or more.

-- an attachment line of a record: channel, mode bits, member part
local LINE = '\n([^\t\n]+)\t(%d+)([^\n]*)'
-- a member in a line's member part: client id
local MEMBER = '\t([^\t]+)'

-- Removes one attachment's share of its channel's counters.
local function drop_attachment(ch, modes, members)
  local m = metrics(ch)
  if members ~= '' then
    for client in sgmatch(members, MEMBER) do member_gone(ch, client) end
  end
  local slots = mode_info(modes).slots
  for k = 1, #slots do
    local x = slots[k]
    m[x] = m[x] - 1
  end
  m[C] = m[C] - 1
  touch(m)
end

-- Removes every attachment of a record (or of its lines) from the counters.
local function drop_record(r)
  for ch, modes, members in sgmatch(r, LINE) do
    drop_attachment(ch, modes, members)
  end
end

-- The line of CH in a connection's lines: start, end (exclusive), mode
-- bits, and where its member part starts; nil when not attached.
local function find_line(lines, ch)
  local key = '\n' .. ch .. '\t'
  local i = sfind(lines, key, 1, true)
  if not i then return nil end
  local j = sfind(lines, '\n', i + 1, true) or (#lines + 1)
  local s = i + #key
  local modes = smatch(lines, '^%d+', s)
  return i, j, modes, s + #modes
end

-- The member CLIENT in a line's member part lines[ms, j) ('\tCLIENT' per
-- member): the position of its tab, or nil. Searched in place: the part is
-- not cut out, and a match cannot run past j (member ids hold no '\n').
local function member_at(lines, ms, j, client)
  local pat = '\t' .. client
  local e0 = #pat
  local p = ms
  while p < j do
    p = sfind(lines, pat, p, true)
    if not p or p >= j then return nil end
    local e = p + e0
    -- the whole id, not the start of a longer one
    if e == j or sbyte(lines, e) == 9 then return p end
    p = p + 1
  end
  return nil
end

-- Connections a write works on, all owned by its token once loaded:
-- R[conn] is one table per connection (one insertion into R, where a
-- table per kind of bookkeeping cost one each), made with all its slots:
local LINES = 1 -- its attachment lines; false: no such connection
local COUNT = 2 -- its attachment count
local CHANGED = 3 -- changed: flush_conns() writes it back
local OWNED = 4 -- already in the token's set of connections
local CONN = 5 -- its id
local FOREIGN = 6 -- the token of another live session owning it, or false
local R, R_list, nchanged = {}, {}, 0

-- Forgets the connections of the previous session (the next one has
-- another token).
local function reset_conns()
  R, R_list, nchanged = {}, {}, 0
end

local function rec_set(c, lines, n)
  c[LINES] = lines
  c[COUNT] = n
  if not c[CHANGED] then
    c[CHANGED] = true
    nchanged = nchanged + 1
    R_list[nchanged] = c
  end
end

-- Reads the records of conns[1..count] (repeats allowed) not read yet
-- (each table made by one constructor). A connection owned by another live
-- session is marked FOREIGN: an attach or an enter through it moves it
-- whole (claim(), a resume on another front end), a detach or leave leaves
-- it alone. One owned by a dead session is removed first, so its old state
-- is removed exactly once.
local function load_conns(tok, conns, count)
  local ids, nwant = { K_CONNS }, 0
  for k = 1, count do
    local conn = conns[k]
    if R[conn] == nil then
      R[conn] = true
      nwant = nwant + 1
      ids[nwant + 1] = conn
    end
  end
  if nwant == 0 then return end
  local recs = call_list('HMGET', ids, 1, nwant + 1)
  for i = 1, nwant do
    local conn, r = ids[i + 1], recs[i]
    if not r then
      R[conn] = { false, 0, false, false, conn, false }
    else
      local o, n, lines = smatch(r, '^([^\t]*)\t(%d+)(.*)$')
      if o == tok then
        R[conn] = { lines, STRNUM[n] or num(n), false, true, conn, false }
      elseif lease_alive(o) then
        R[conn] = { lines, STRNUM[n] or num(n), false, false, conn, o }
      else
        rcall('SREM', k_tokconns(o), conn)
        R[conn] = { false, 0, false, false, conn, false }
        drop_record(lines)
        rcall('HDEL', K_CONNS, conn)
      end
    end
  end
end

-- Moves a connection of another live session to this call's token: out
-- of the old token's set, written back with the new owner.
local function claim(c)
  rcall('SREM', k_tokconns(c[FOREIGN]), c[CONN])
  c[FOREIGN] = false
  rec_set(c, c[LINES], c[COUNT])
end

-- Writes back the changed records of tok's connections and its set;
-- returns whether tok owns any of them afterwards.
local function flush_conns(tok)
  local keep, new, gone = { K_CONNS }, { k_tokconns(tok) }, { K_CONNS }
  local nk, nn, ng = 1, 1, 1
  local head = tok .. '\t'
  for k = 1, nchanged do
    local c = R_list[k]
    local conn, lines, n = c[CONN], c[LINES], c[COUNT]
    if lines and n > 0 then
      keep[nk + 1] = conn
      keep[nk + 2] = head .. (NUMSTR[n] or str(n)) .. lines
      nk = nk + 2
      if not c[OWNED] then
        nn = nn + 1
        new[nn] = conn
      end
    else
      ng = ng + 1
      gone[ng] = conn
    end
  end
  call_list('HSET', keep, 1, nk)
  call_list('SADD', new, 1, nn)
  if ng > 1 then
    call_list('HDEL', gone, 1, ng)
    gone[1] = new[1] -- the same ids, out of the token's set
    call_list('SREM', gone, 1, ng)
  end
  return nk > 1
end

-- Removes connections of a retired token until about `budget` attachments
-- were removed (a connection is removed whole: at most MAX_CHANNELS);
-- returns how many connections were removed and whether the token is done.
local function reap_token(tok, budget)
  local kt = k_tokconns(tok)
  local purged, work = 0, 0
  while work < budget do
    local conns = rcall('SRANDMEMBER', kt, 64)
    if #conns == 0 then break end
    local recs = rcall('HMGET', K_CONNS, unpk(conns))
    local done, gone = {}, {}
    for k, conn in ipairs(conns) do
      if work >= budget then break end
      local r = recs[k]
      done[#done + 1] = conn
      purged = purged + 1
      work = work + 1
      local o, n = nil, 0
      if r then o, n = smatch(r, '^([^\t]*)\t(%d+)') end
      if o == tok then
        work = work + tonum(n)
        drop_record(r)
        gone[#gone + 1] = conn
      end
    end
    rcall('SREM', kt, unpk(done))
    if #gone > 0 then rcall('HDEL', K_CONNS, unpk(gone)) end
  end
  if rcall('EXISTS', kt) == 0 then
    rcall('SREM', K_REAPING, tok)
    rcall('DEL', k_tok(tok))
    return purged, true
  end
  return purged, false
end
