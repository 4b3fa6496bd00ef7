-- The body of the Redis function library (see src/store/redis/functions.rs):
-- key names, the clock, counters, and the occupancy rules, defined once
-- when the library loads. Every function starts with begin(ARGV, clock),
-- which sets the per-call values below (the Redis clock only when the
-- function reads leases) and resets the per-call state; Redis runs one call
-- at a time, so the functions can share it. Mirrors
-- src/domain/state.rs; the key layout is documented in
-- src/store/redis/keys.rs, which builds the same names.
--
-- ARGV[1] key prefix, ARGV[2] number of event stream shards (0: no events),
-- ARGV[3] approximate maximum length of each event stream; the function's
-- own arguments follow from ARGV[4].
--
-- Cost model: a write reads what it needs with a few variadic commands
-- (MGET of the channels' counters, HMGET of the connections' records),
-- changes them in Lua, and writes them back with one variadic command per
-- kind of change (MSET, HSET, ZADD, ZREM, one XADD per stream shard). A
-- batch of 100 operations is then a few dozen Redis commands, not a dozen
-- per operation: each command called from Lua costs several thousand
-- instructions of dispatch beyond its own work. In Lua itself, stores into
-- tables and new strings are what cost: per-item tables are made whole by
-- one constructor, argument lists are built with their head in place (no
-- copy), and hot paths avoid helper calls and globals (see callgrind
-- figures in BENCHMARKS.md).

-- Standard functions, kept as upvalues. A Redis function reads globals
-- through its environment's metatable: every `string.find` is two table
-- lookups and a metamethod check, where an upvalue is one load. The library
-- body cannot take them when it loads (only the registration API is
-- visible then), so begin() fills them on the first call.
local sfind, ssub, smatch, sgmatch, sformat, sbyte, spack, sunpack
local tonum, unpk, band, bxor, mfloor, mmin, mmax, rcall, tconcat

-- per call: the common arguments, the keys named after the prefix, and the
-- Redis clock in ms (for functions that read it)
local P, NSHARDS, MAXLEN, NOW
local K_LEASES, K_REAPING, K_IDX_NAME, K_IDX_BUSY, K_CONNS, K_TOTALS

local function k_sess(s) return P .. ':sess:' .. s end
local function k_tok(t) return P .. ':tok:' .. t end
local function k_tokconns(t) return P .. ':tok:' .. t .. ':conns' end
local function k_metrics(ch) return P .. ':{ch:' .. ch .. '}:m' end
local function k_clients(ch) return P .. ':{ch:' .. ch .. '}:cl' end
local function k_events(n) return P .. ':{ev:' .. n .. '}' end
-- as MAX_CHANNELS_PER_CONNECTION in src/domain/ops.rs
local MAX_CHANNELS = 1000

-- metric slots, in the order of Category::ALL:
-- c pub sub pc pm ps op os pcl
local C, PM, PCL = 1, 5, 9
-- mode bit -> metric slot
local MODE_SLOTS = { { 1, 2 }, { 2, 3 }, { 4, 4 }, { 8, 6 }, { 16, 7 }, { 32, 8 } }
local PRESENCE = 4
-- unpk() takes at most about 8,000 values: variadic calls go in chunks
-- (an even number, so that pairs stay together)
local CHUNK = 4000

local function has(modes, b) return band(modes, b) ~= 0 end

-- Numbers become strings through sprintf('%.14g'), thousands of
-- instructions each: integers up to MEMO_MAX are formatted once and kept
-- (across calls: the memo is bounded and holds no state).
local MEMO_MAX = 4096
local NUMSTR = {}
local function str(n)
  local v = NUMSTR[n]
  if not v then
    v = sformat('%d', n)
    if n >= 0 and n <= MEMO_MAX then NUMSTR[n] = v end
  end
  return v
end

-- The other way: tonumber() parses with glibc strtod, twice (Lua 5.1
-- checks, then converts), about 1,000 instructions; short numerals (counts,
-- sequence numbers below 10,000, flags) are parsed once and kept. Hot paths
-- write `STRNUM[s] or num(s)`.
local STRNUM = {}
local function num(s)
  local v = tonum(s)
  if v and #s <= 4 then STRNUM[s] = v end
  return v
end

-- The busy index key of a channel with c connections is
-- busy_prefix(c) .. name.
local BUSY_PREFIX = {}
local function busy_prefix(c)
  local v = sformat('%010d', 4294967295 - c) .. ':'
  if c <= MEMO_MAX then BUSY_PREFIX[c] = v end
  return v
end

-- FNV-1a (32 bit) over the name's bytes, as keys::shard_of in Rust.
-- LuaBitOp works on signed 32-bit values, so results are brought back into
-- [0, 2^32) and the multiplication by 16777619 (2^24 + 403) is split to
-- stay exact in doubles.
local function shard_of(ch)
  local h = 2166136261
  for i = 1, #ch do
    h = bxor(h, sbyte(ch, i)) % 4294967296
    h = (h * 403 + (h % 256) * 16777216) % 4294967296
  end
  return h % NSHARDS
end

-- The arguments of one chunk: head, then items[i..j].
local function chunk_args(head, items, i, j)
  local args, n = {}, #head
  for k = 1, n do args[k] = head[k] end
  for k = i, j do
    n = n + 1
    args[n] = items[k]
  end
  return args, n
end

-- Calls cmd with list[1..n], whose first nhead values are the head
-- arguments: in one call when it fits, else in chunks of the items. Hot
-- paths build their argument lists this way (head first), so nothing is
-- copied into a second table.
local function call_list(cmd, list, nhead, n)
  if n <= nhead then return end
  if n - nhead <= CHUNK then
    rcall(cmd, unpk(list, 1, n))
    return
  end
  local head = { unpk(list, 1, nhead) }
  for i = nhead + 1, n, CHUNK do
    local args, k = chunk_args(head, list, i, mmin(n, i + CHUNK - 1))
    rcall(cmd, unpk(args, 1, k))
  end
end

-- Calls cmd with the head arguments followed by items, in chunks, for
-- commands answering one value per item: the replies.
local function read_many(cmd, head, items)
  local total = #items
  if total == 0 then return {} end
  if #head == 0 and total <= CHUNK then return rcall(cmd, unpk(items, 1, total)) end
  if total <= CHUNK then
    local args, n = chunk_args(head, items, 1, total)
    return rcall(cmd, unpk(args, 1, n))
  end
  local out, no = {}, 0
  for i = 1, total, CHUNK do
    local args, n = chunk_args(head, items, i, mmin(total, i + CHUNK - 1))
    local replies = rcall(cmd, unpk(args, 1, n))
    for k = 1, #replies do out[no + k] = replies[k] end
    no = no + #replies
  end
  return out
end

-- A channel's counters are one string: the nine slots as unsigned 32-bit
-- little-endian integers, 36 bytes (absent: all zero). It is also the body
-- of the channel's events. Packed rather than text: one struct call reads
-- or writes all nine, where parsing a comma separated list took nine
-- tonumber calls (glibc strtod) and a gmatch, about a fifth of an Apply
-- operation's instructions.
local PACK = '<I4I4I4I4I4I4I4I4I4'
-- an operation's result in apply's reply: its status byte, then its
-- channel's counters as PACK
local OP_PACK = '<BI4I4I4I4I4I4I4I4I4'
-- an operation's status byte in apply's reply, when it carries no counters
local STATUS_BYTE = { '\1', '\2', '\3' }
-- the results of a write of one operation (reused: only slot 1 is read)
local OUT1 = { false }
local function parse_metrics(v)
  if v and #v == 36 then
    local m = { sunpack(PACK, v) }
    m[10] = nil
    return m
  end
  return { 0, 0, 0, 0, 0, 0, 0, 0, 0 }
end

-- Channels this call works on: M[name] is one table per channel, made
-- whole by one constructor once its counters are read (every later store
-- into a table, and every growth of one, costs far more than a
-- constructor's slots): the nine counters (changed in Lua, written back
-- by finish()), then:
local READ_C = 10 -- connection count as read
local TOUCHED = 11 -- changed by this call
local KEY = 12 -- the counters' key
local SHARD = 13 -- event stream shard as a string, when the caller passed it
local NAME = 14
local READ_PM = 15 -- presence member count as read
-- Between apply's first pass and its load_metrics() call, the channels
-- of its operations map to their shard (a string).
local M = {}

-- Reads the counters of the channels names[1..n], which have no table
-- yet, in one MGET, and makes their tables.
local function load_metrics(names, n)
  if n == 0 then return end
  local keys = {}
  for i = 1, n do keys[i] = k_metrics(names[i]) end
  local vals = read_many('MGET', {}, keys)
  for i = 1, n do
    local ch, v = names[i], vals[i]
    local a, b, c, d, e, f, g, h, k = 0, 0, 0, 0, 0, 0, 0, 0, 0
    if v and #v == 36 then a, b, c, d, e, f, g, h, k = sunpack(PACK, v) end
    M[ch] = { a, b, c, d, e, f, g, h, k, a, false, keys[i], M[ch] or false, ch, e }
  end
end

-- A channel's table, reading its counters when needed (the channels of a
-- write's operations are read before it runs; others, those of records
-- being removed, one at a time).
local function metrics(ch)
  local m = M[ch]
  if m then return m end
  load_metrics({ ch }, 1)
  return M[ch]
end

-- channels changed by this call, in first-touch order
local touched_list, ntouched = {}, 0
local function touch(m)
  if not m[TOUCHED] then
    m[TOUCHED] = true
    ntouched = ntouched + 1
    touched_list[ntouched] = m
  end
end

-- Writes back every changed channel: counters, both indexes, the app-wide
-- sums of connections and presence members (K_TOTALS, by the difference
-- from what was read), and one event entry per stream shard holding each
-- changed channel's new counters (field: the channel's name, value: its
-- counters).
local function finish()
  local dc, dpm = 0, 0
  local sets, dels = {}, {}
  local busy_rem, busy_add = { K_IDX_BUSY }, { K_IDX_BUSY }
  local name_rem, name_add = { K_IDX_NAME }, { K_IDX_NAME }
  local ns, nd, nbr, nba, nnr, nna = 0, 0, 1, 1, 1, 1
  local by_shard = {}
  for t = 1, ntouched do
    local m = touched_list[t]
    local ch = m[NAME]
    local before, after = m[READ_C], m[C]
    local pm = m[PM]
    if pm ~= m[READ_PM] then
      dpm = dpm + pm - m[READ_PM]
      m[READ_PM] = pm
    end
    local body = spack(PACK, m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8], m[9])
    if after > 0 then
      sets[ns + 1] = m[KEY]
      sets[ns + 2] = body
      ns = ns + 2
    else
      dels[nd + 1] = m[KEY]
      dels[nd + 2] = k_clients(ch)
      nd = nd + 2
    end
    if before ~= after then
      if before > 0 then
        nbr = nbr + 1
        busy_rem[nbr] = (BUSY_PREFIX[before] or busy_prefix(before)) .. ch
      end
      if after > 0 then
        busy_add[nba + 1] = '0'
        busy_add[nba + 2] = (BUSY_PREFIX[after] or busy_prefix(after)) .. ch
        nba = nba + 2
        if before == 0 then
          name_add[nna + 1] = '0'
          name_add[nna + 2] = ch
          nna = nna + 2
        end
      else
        nnr = nnr + 1
        name_rem[nnr] = ch
      end
      dc = dc + after - before
      m[READ_C] = after
    end
    m[TOUCHED] = false
    if NSHARDS > 0 then
      local s = m[SHARD] or str(shard_of(ch))
      local e = by_shard[s]
      if not e then
        e = { k_events(s), 'MAXLEN', '~', false, '*', n = 5 }
        by_shard[s] = e
      end
      local n = e.n
      e[n + 1] = ch
      e[n + 2] = body
      e.n = n + 2
    end
  end
  touched_list, ntouched = {}, 0
  if dc ~= 0 then rcall('HINCRBY', K_TOTALS, 'c', dc) end
  if dpm ~= 0 then rcall('HINCRBY', K_TOTALS, 'pm', dpm) end
  call_list('MSET', sets, 0, ns)
  call_list('DEL', dels, 0, nd)
  call_list('ZREM', busy_rem, 1, nbr)
  call_list('ZADD', busy_add, 1, nba)
  call_list('ZREM', name_rem, 1, nnr)
  call_list('ZADD', name_add, 1, nna)
  -- the stream keeps about MAXLEN changes: an entry of k changes trims it
  -- to MAXLEN / k entries
  local maxlen = tonum(MAXLEN) * 2
  for _, e in pairs(by_shard) do
    local n = e.n
    local keep = mfloor(maxlen / (n - 5))
    e[4] = keep >= 1 and (NUMSTR[keep] or str(keep)) or '1'
    call_list('XADD', e, 5, n)
  end
end

local function lease_alive(tok)
  local d = rcall('ZSCORE', K_LEASES, tok)
  return d and tonum(d) > NOW
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

-- The session's live token, or nil; a token whose lease ran out is
-- retired on the way.
--
-- A token is also the lease's epoch, reported to the front end: the
-- caller picks a new one at random (a 64-bit number in decimal) for each
-- lease it may open, so tokens never repeat, even after Redis lost its
-- data (a counter kept in Redis would start again).
local function live_token(session)
  local tok = rcall('GET', k_sess(session))
  -- (a missing key reads as false)
  if not tok then return nil end
  if not lease_alive(tok) then
    retire(tok)
    return nil
  end
  return tok
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

-- Presence member bookkeeping on a channel: member count, and the count of
-- members per client id (for unique clients).
local function member_new(ch, client)
  local m = metrics(ch)
  m[PM] = m[PM] + 1
  if rcall('HINCRBY', k_clients(ch), client, '1') == 1 then m[PCL] = m[PCL] + 1 end
  touch(m)
end

local function member_gone(ch, client)
  local m = metrics(ch)
  m[PM] = m[PM] - 1
  local kc = k_clients(ch)
  if rcall('HINCRBY', kc, client, '-1') <= 0 then
    rcall('HDEL', kc, client)
    m[PCL] = m[PCL] - 1
  end
  touch(m)
end

-- A connection's record, its field in the hash P:conns: the owning token
-- and the number of attachments ('TOK\tN'), then per attachment
-- '\nCHANNEL\tMODES' followed by '\tCLIENT' per presence member of the
-- connection on that channel. Names and ids hold no control characters,
-- so the separators cannot occur inside them; lookups are plain substring
-- searches, without decoding the record.
--
-- Hot paths below avoid helper calls and C functions where they can: in
-- Redis' Lua every call costs hundreds of instructions, every number
-- parsed or formatted a thousand or more.

-- Per mode bits (as the decimal string the record holds): the metric
-- slots they count in, and whether they include presence.
local MODE_INFO = {}
local function mode_info(s)
  local mi = MODE_INFO[s]
  if not mi then
    local v = tonum(s)
    local slots = {}
    for _, ms in ipairs(MODE_SLOTS) do
      if has(v, ms[1]) then slots[#slots + 1] = ms[2] end
    end
    mi = { slots = slots, presence = has(v, PRESENCE) }
    MODE_INFO[s] = mi
  end
  return mi
end

-- Removes one attachment's share of its channel's counters.
local function drop_attachment(ch, modes, members)
  local m = metrics(ch)
  if members ~= '' then
    for client in sgmatch(members, '\t([^\t]+)') do member_gone(ch, client) end
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
  for ch, modes, members in sgmatch(r, '\n([^\t\n]+)\t(%d+)([^\n]*)') do
    drop_attachment(ch, modes, members)
  end
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
  local recs
  if nwant <= CHUNK then
    recs = rcall('HMGET', unpk(ids, 1, nwant + 1))
  else
    local items = {}
    for i = 1, nwant do items[i] = ids[i + 1] end
    recs = read_many('HMGET', { K_CONNS }, items)
  end
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

-- Returns 1 when applied, 3 when the connection has no room for another
-- channel. modes: the mode bits as a decimal string.
local function op_attach(c, ch, modes)
  if c[FOREIGN] then
    if c[COUNT] >= MAX_CHANNELS and not sfind(c[LINES], '\n' .. ch .. '\t', 1, true) then return 3 end
    claim(c)
  end
  local lines, n = c[LINES], c[COUNT]
  if not lines then lines, n = '', 0 end
  local key = '\n' .. ch .. '\t'
  local m = metrics(ch)
  local mi = mode_info(modes)
  local i = sfind(lines, key, 1, true)
  if i then
    local j = sfind(lines, '\n', i + 1, true) or (#lines + 1)
    local s = i + #key
    local old = smatch(lines, '^%d+', s)
    if old == modes then return 1 end
    local members = ssub(lines, s + #old, j - 1)
    local oi = mode_info(old)
    if oi.presence and not mi.presence and members ~= '' then
      for client in sgmatch(members, '\t([^\t]+)') do member_gone(ch, client) end
      members = ''
    end
    local slots = oi.slots
    for k = 1, #slots do
      local x = slots[k]
      m[x] = m[x] - 1
    end
    lines = ssub(lines, 1, i - 1) .. key .. modes .. members .. ssub(lines, j)
  else
    if n >= MAX_CHANNELS then return 3 end
    m[C] = m[C] + 1
    lines = lines .. key .. modes
    n = n + 1
  end
  local slots = mi.slots
  for k = 1, #slots do
    local x = slots[k]
    m[x] = m[x] + 1
  end
  rec_set(c, lines, n)
  touch(m)
  return 1
end

local function op_detach(c, ch)
  local lines = c[LINES]
  if not lines or c[FOREIGN] then return end
  local key = '\n' .. ch .. '\t'
  local i = sfind(lines, key, 1, true)
  if not i then return end
  local j = sfind(lines, '\n', i + 1, true) or (#lines + 1)
  local s = i + #key
  local old = smatch(lines, '^%d+', s)
  drop_attachment(ch, old, ssub(lines, s + #old, j - 1))
  rec_set(c, ssub(lines, 1, i - 1) .. ssub(lines, j), c[COUNT] - 1)
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

-- Returns 1 when applied (or already a member), 2 when the connection is
-- not attached to the channel with presence mode. The member goes at the
-- end of the line.
local function op_enter(c, ch, client)
  local lines = c[LINES]
  if not lines then return 2 end
  local i, j, modes, ms = find_line(lines, ch)
  if not i or not mode_info(modes).presence then return 2 end
  if c[FOREIGN] then claim(c) end
  if member_at(lines, ms, j, client) then return 1 end
  member_new(ch, client)
  rec_set(c, ssub(lines, 1, j - 1) .. '\t' .. client .. ssub(lines, j), c[COUNT])
  return 1
end

local function op_leave(c, ch, client)
  local lines = c[LINES]
  if not lines or c[FOREIGN] then return end
  local i, j, _, ms = find_line(lines, ch)
  if not i then return end
  local p = member_at(lines, ms, j, client)
  if not p then return end
  member_gone(ch, client)
  rec_set(c, ssub(lines, 1, p - 1) .. ssub(lines, p + #client + 1), c[COUNT])
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

-- Starts a call: the common arguments, the clock when the function needs
-- it, and fresh per-call state (a call that failed halfway may have left
-- some behind).
local function begin(argv, clock)
  if not rcall then
    sfind, ssub, smatch, sgmatch = string.find, string.sub, string.match, string.gmatch
    sformat, sbyte, spack, sunpack = string.format, string.byte, struct.pack, struct.unpack
    tonum, unpk, band, bxor = tonumber, unpack, bit.band, bit.bxor
    mfloor, mmin, mmax, rcall = math.floor, math.min, math.max, redis.call
    tconcat = table.concat
  end
  P = argv[1]
  NSHARDS = tonum(argv[2])
  MAXLEN = argv[3]
  K_LEASES = P .. ':leases'
  K_REAPING = P .. ':reaping'
  K_IDX_NAME = P .. ':idx:name'
  K_IDX_BUSY = P .. ':idx:busy'
  K_CONNS = P .. ':conns'
  K_TOTALS = P .. ':totals'
  if clock then
    local time = rcall('TIME')
    NOW = tonum(time[1]) * 1000 + mfloor(tonum(time[2]) / 1000)
  else
    NOW = nil
  end
  M = {}
  OWNERS = {}
  touched_list, ntouched = {}, 0
  reset_conns()
end
