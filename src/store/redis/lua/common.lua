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
-- instructions of dispatch beyond its own work.

-- per call: the common arguments, the keys named after the prefix, and the
-- Redis clock in ms (for functions that read it)
local P, NSHARDS, MAXLEN, NOW
local K_LEASES, K_REAPING, K_TOKSEQ, K_IDX_NAME, K_IDX_BUSY, K_CONNS

local function k_sess(s) return P .. ':sess:' .. s end
local function k_tok(t) return P .. ':tok:' .. t end
local function k_tokconns(t) return P .. ':tok:' .. t .. ':conns' end
local function k_metrics(ch) return P .. ':{ch:' .. ch .. '}:m' end
local function k_clients(ch) return P .. ':{ch:' .. ch .. '}:cl' end
local function k_events(n) return P .. ':{ev:' .. n .. '}' end
local function k_seq(s) return P .. ':seq:' .. s end
-- as SEQUENCE_MEMORY_MS in src/domain/state.rs
local SEQUENCE_MEMORY_MS = 600000
-- as MAX_CHANNELS_PER_CONNECTION in src/domain/ops.rs
local MAX_CHANNELS = 1000

-- metric slots, in the order of Category::ALL:
-- c pub sub pc pm ps op os pcl
local C, PM, PCL = 1, 5, 9
-- mode bit -> metric slot
local MODE_SLOTS = { { 1, 2 }, { 2, 3 }, { 4, 4 }, { 8, 6 }, { 16, 7 }, { 32, 8 } }
local PRESENCE = 4
-- unpack() takes at most about 8,000 values: variadic calls go in chunks
-- (an even number, so that pairs stay together)
local CHUNK = 4000

local function has(modes, b) return bit.band(modes, b) ~= 0 end

-- Numbers become strings through sprintf('%.14g'), thousands of
-- instructions each: integers up to MEMO_MAX are formatted once and kept
-- (across calls: the memo is bounded and holds no state).
local MEMO_MAX = 4096
local NUMSTR = {}
local function str(n)
  local v = NUMSTR[n]
  if not v then
    v = string.format('%d', n)
    if n >= 0 and n <= MEMO_MAX then NUMSTR[n] = v end
  end
  return v
end

local BUSY_PREFIX = {}
local function busy_key(c, ch)
  local v = BUSY_PREFIX[c]
  if not v then
    v = string.format('%010d', 4294967295 - c) .. ':'
    if c <= MEMO_MAX then BUSY_PREFIX[c] = v end
  end
  return v .. ch
end

-- FNV-1a (32 bit) over the name's bytes, as keys::shard_of in Rust.
-- LuaBitOp works on signed 32-bit values, so results are brought back into
-- [0, 2^32) and the multiplication by 16777619 (2^24 + 403) is split to
-- stay exact in doubles.
local function shard_of(ch)
  local h = 2166136261
  for i = 1, #ch do
    h = bit.bxor(h, string.byte(ch, i)) % 4294967296
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

-- Calls cmd with the head arguments followed by items, in chunks.
local function call_many(cmd, head, items)
  local total = #items
  if total == 0 then return end
  if #head == 0 and total <= CHUNK then
    redis.call(cmd, unpack(items, 1, total))
    return
  end
  for i = 1, total, CHUNK do
    local args, n = chunk_args(head, items, i, math.min(total, i + CHUNK - 1))
    redis.call(cmd, unpack(args, 1, n))
  end
end

-- As call_many, for commands answering one value per item: the replies.
local function read_many(cmd, head, items)
  local total = #items
  if total == 0 then return {} end
  if total <= CHUNK then
    local args, n = chunk_args(head, items, 1, total)
    return redis.call(cmd, unpack(args, 1, n))
  end
  local out, no = {}, 0
  for i = 1, total, CHUNK do
    local args, n = chunk_args(head, items, i, math.min(total, i + CHUNK - 1))
    local replies = redis.call(cmd, unpack(args, 1, n))
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
local function parse_metrics(v)
  if v and #v == 36 then
    local m = { struct.unpack(PACK, v) }
    m[10] = nil
    return m
  end
  return { 0, 0, 0, 0, 0, 0, 0, 0, 0 }
end

-- Counters of the channels this script changes, read once and written
-- back by finish(). Slots past the nine counters (one table per channel
-- instead of one table per kind of bookkeeping: each new key of a Lua
-- table costs an insertion, and these are per channel):
local READ_C, TOUCHED = 10, 11 -- connection count as read; changed by this script
local M = {}

-- Reads the counters of the given channels not read yet, in one MGET.
local function load_metrics(names)
  local want, keys, n = {}, {}, 0
  for k = 1, #names do
    local ch = names[k]
    if not M[ch] then
      n = n + 1
      want[n] = ch
      keys[n] = k_metrics(ch)
    end
  end
  if n == 0 then return end
  local vals = read_many('MGET', {}, keys)
  for i = 1, n do
    local ch = want[i]
    local m = parse_metrics(vals[i])
    m[READ_C] = m[C]
    M[ch] = m
  end
end

local function metrics(ch)
  if not M[ch] then load_metrics({ ch }) end
  return M[ch]
end

-- event stream shard of channels, when the caller passed it (as a string)
local SHARD = {}

-- channels changed by this call, in first-touch order
local touched_list, ntouched = {}, 0
local function touch(ch)
  local m = M[ch]
  if not m[TOUCHED] then
    m[TOUCHED] = true
    ntouched = ntouched + 1
    touched_list[ntouched] = ch
  end
end

-- Writes back every changed channel: counters, both indexes, and one event
-- entry per stream shard holding each changed channel's new counters
-- (field: the channel's name, value: its counters).
local function finish()
  local sets, dels, busy_rem, busy_add, name_add, name_rem = {}, {}, {}, {}, {}, {}
  local ns, nd, nbr, nba, nna, nnr = 0, 0, 0, 0, 0, 0
  local by_shard = {}
  for t = 1, ntouched do
    local ch = touched_list[t]
    local m = M[ch]
    local before, after = m[READ_C], m[C]
    local body = struct.pack(PACK, m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8], m[9])
    if after > 0 then
      sets[ns + 1] = k_metrics(ch)
      sets[ns + 2] = body
      ns = ns + 2
    else
      dels[nd + 1] = k_metrics(ch)
      dels[nd + 2] = k_clients(ch)
      nd = nd + 2
    end
    if before ~= after then
      if before > 0 then
        nbr = nbr + 1
        busy_rem[nbr] = busy_key(before, ch)
      end
      if after > 0 then
        busy_add[nba + 1] = '0'
        busy_add[nba + 2] = busy_key(after, ch)
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
    end
    m[READ_C] = after
    m[TOUCHED] = nil
    if NSHARDS > 0 then
      local s = SHARD[ch]
      if not s then s = str(shard_of(ch)) end
      local e = by_shard[s]
      if not e then
        e = { n = 0 }
        by_shard[s] = e
      end
      local n = e.n
      e[n + 1] = ch
      e[n + 2] = body
      e.n = n + 2
    end
  end
  touched_list, ntouched = {}, 0
  if ns > 0 then call_many('MSET', {}, sets) end
  if nd > 0 then call_many('DEL', {}, dels) end
  if nbr > 0 then call_many('ZREM', { K_IDX_BUSY }, busy_rem) end
  if nba > 0 then call_many('ZADD', { K_IDX_BUSY }, busy_add) end
  if nnr > 0 then call_many('ZREM', { K_IDX_NAME }, name_rem) end
  if nna > 0 then call_many('ZADD', { K_IDX_NAME }, name_add) end
  -- the stream keeps about MAXLEN changes: an entry of k changes trims it
  -- to MAXLEN / k entries
  local maxlen = tonumber(MAXLEN) * 2
  for s, e in pairs(by_shard) do
    local keep = math.floor(maxlen / e.n)
    call_many('XADD', { k_events(s), 'MAXLEN', '~', keep >= 1 and (NUMSTR[keep] or str(keep)) or '1', '*' }, e)
  end
end

local function lease_alive(tok)
  local d = redis.call('ZSCORE', K_LEASES, tok)
  return d and tonumber(d) > NOW
end

-- Takes a session's token out of service: its lease ends and its remaining
-- connections are left to the reapers (or to the next writer that claims
-- them). The session name is freed for a new token.
local function retire(tok)
  redis.call('ZREM', K_LEASES, tok)
  redis.call('SADD', K_REAPING, tok)
  local s = redis.call('HGET', k_tok(tok), 's')
  if s and redis.call('GET', k_sess(s)) == tok then
    redis.call('DEL', k_sess(s))
  end
end

-- Returns the session's live token, extending its lease; opens a new lease
-- with ttl when the session is unknown or expired. Second result: whether
-- it was alive.
local function open_session(session, ttl)
  local ks = k_sess(session)
  local tok = redis.call('GET', ks)
  if tok then
    if lease_alive(tok) then
      local t = tonumber(redis.call('HGET', k_tok(tok), 'ttl'))
      redis.call('ZADD', K_LEASES, NOW + t, tok)
      return tok, true
    end
    retire(tok)
  end
  tok = tostring(redis.call('INCR', K_TOKSEQ))
  redis.call('SET', ks, tok)
  redis.call('HSET', k_tok(tok), 's', session, 'ttl', ttl)
  redis.call('ZADD', K_LEASES, NOW + ttl, tok)
  return tok, false
end

-- Presence member bookkeeping on a channel: member count, and the count of
-- members per client id (for unique clients).
local function member_new(ch, client)
  local m = metrics(ch)
  m[PM] = m[PM] + 1
  if redis.call('HINCRBY', k_clients(ch), client, '1') == 1 then m[PCL] = m[PCL] + 1 end
  touch(ch)
end

local function member_gone(ch, client)
  local m = metrics(ch)
  m[PM] = m[PM] - 1
  local kc = k_clients(ch)
  if redis.call('HINCRBY', kc, client, '-1') <= 0 then
    redis.call('HDEL', kc, client)
    m[PCL] = m[PCL] - 1
  end
  touch(ch)
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
    local v = tonumber(s)
    local slots = {}
    for _, ms in ipairs(MODE_SLOTS) do
      if has(v, ms[1]) then slots[#slots + 1] = ms[2] end
    end
    mi = { slots = slots, presence = has(v, PRESENCE) }
    MODE_INFO[s] = mi
  end
  return mi
end

local function has_member(members, client)
  return string.find(members .. '\t', '\t' .. client .. '\t', 1, true) ~= nil
end

local function without_member(members, client)
  local s = members .. '\t'
  local k = '\t' .. client .. '\t'
  local i = string.find(s, k, 1, true)
  return string.sub(s, 1, i - 1) .. string.sub(s, i + #k - 1, #s - 1)
end

-- Removes one attachment's share of its channel's counters.
local function drop_attachment(ch, modes, members)
  local m = metrics(ch)
  if members ~= '' then
    for client in string.gmatch(members, '\t([^\t]+)') do member_gone(ch, client) end
  end
  local slots = mode_info(modes).slots
  for k = 1, #slots do
    local x = slots[k]
    m[x] = m[x] - 1
  end
  m[C] = m[C] - 1
  touch(ch)
end

-- Removes every attachment of a record (or of its lines) from the counters.
local function drop_record(r)
  for ch, modes, members in string.gmatch(r, '\n([^\t\n]+)\t(%d+)([^\n]*)') do
    drop_attachment(ch, modes, members)
  end
end

-- Connections a write script works on, all owned by its token once
-- loaded: R[conn] their attachment lines (false: no such connection),
-- RC[conn] their attachment count. Changed ones are written back by
-- flush_conns(); OWNED marks those already in the token's set.
local R, RC, R_changed, R_list, OWNED = {}, {}, {}, {}, {}
local nchanged = 0

-- Forgets the connections of the previous write (the next write of the
-- same script may belong to another token).
local function reset_conns()
  R, RC, R_changed, R_list, OWNED = {}, {}, {}, {}, {}
  nchanged = 0
end

local function rec_set(conn, lines, n)
  R[conn] = lines
  RC[conn] = n
  if not R_changed[conn] then
    R_changed[conn] = true
    nchanged = nchanged + 1
    R_list[nchanged] = conn
  end
end

-- Makes tok the owner of the given connections, reading the records of
-- those not read yet.
-- A connection owned by another live session moves whole (a resume on
-- another front end); one owned by a dead session is removed first, so its
-- old state is removed exactly once.
local function load_conns(tok, conns)
  local want, nwant = {}, 0
  for k = 1, #conns do
    local conn = conns[k]
    if R[conn] == nil then
      nwant = nwant + 1
      want[nwant] = conn
    end
  end
  if nwant == 0 then return end
  local recs = read_many('HMGET', { K_CONNS }, want)
  for i = 1, nwant do
    local conn, r = want[i], recs[i]
    if not r then
      R[conn] = false
    else
      local o, n, lines = string.match(r, '^([^\t]*)\t(%d+)(.*)$')
      if o == tok then
        R[conn] = lines
        RC[conn] = tonumber(n)
        OWNED[conn] = true
      else
        redis.call('SREM', k_tokconns(o), conn)
        if lease_alive(o) then
          rec_set(conn, lines, tonumber(n))
        else
          drop_record(lines)
          redis.call('HDEL', K_CONNS, conn)
          R[conn] = false
        end
      end
    end
  end
end

-- Writes back the changed records of tok's connections and its set.
local function flush_conns(tok)
  local keep, gone, new = {}, {}, {}
  local nk, ng, nn = 0, 0, 0
  local head = tok .. '\t'
  for k = 1, nchanged do
    local conn = R_list[k]
    local lines, n = R[conn], RC[conn]
    if lines and n > 0 then
      keep[nk + 1] = conn
      keep[nk + 2] = head .. (NUMSTR[n] or str(n)) .. lines
      nk = nk + 2
      if not OWNED[conn] then
        nn = nn + 1
        new[nn] = conn
      end
    else
      ng = ng + 1
      gone[ng] = conn
    end
  end
  if nk > 0 then call_many('HSET', { K_CONNS }, keep) end
  if nn > 0 then call_many('SADD', { k_tokconns(tok) }, new) end
  if ng > 0 then
    call_many('HDEL', { K_CONNS }, gone)
    call_many('SREM', { k_tokconns(tok) }, gone)
  end
end

-- Returns 1 when applied, 3 when the connection has no room for another
-- channel. modes: the mode bits as a decimal string.
local function op_attach(conn, ch, modes)
  local lines, n = R[conn], RC[conn]
  if not lines then lines, n = '', 0 end
  local key = '\n' .. ch .. '\t'
  local m = metrics(ch)
  local mi = mode_info(modes)
  local i = string.find(lines, key, 1, true)
  if i then
    local j = string.find(lines, '\n', i + 1, true) or (#lines + 1)
    local s = i + #key
    local old = string.match(lines, '^%d+', s)
    if old == modes then return 1 end
    local members = string.sub(lines, s + #old, j - 1)
    local oi = mode_info(old)
    if oi.presence and not mi.presence and members ~= '' then
      for client in string.gmatch(members, '\t([^\t]+)') do member_gone(ch, client) end
      members = ''
    end
    local slots = oi.slots
    for k = 1, #slots do
      local x = slots[k]
      m[x] = m[x] - 1
    end
    lines = string.sub(lines, 1, i - 1) .. key .. modes .. members .. string.sub(lines, j)
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
  rec_set(conn, lines, n)
  touch(ch)
  return 1
end

local function op_detach(conn, ch)
  local lines = R[conn]
  if not lines then return end
  local key = '\n' .. ch .. '\t'
  local i = string.find(lines, key, 1, true)
  if not i then return end
  local j = string.find(lines, '\n', i + 1, true) or (#lines + 1)
  local s = i + #key
  local old = string.match(lines, '^%d+', s)
  drop_attachment(ch, old, string.sub(lines, s + #old, j - 1))
  rec_set(conn, string.sub(lines, 1, i - 1) .. string.sub(lines, j), RC[conn] - 1)
end

-- The line of CH in a connection's lines: start, end (exclusive), mode
-- bits, member part; nil when not attached.
local function find_line(lines, ch)
  local key = '\n' .. ch .. '\t'
  local i = string.find(lines, key, 1, true)
  if not i then return nil end
  local j = string.find(lines, '\n', i + 1, true) or (#lines + 1)
  local s = i + #key
  local modes = string.match(lines, '^%d+', s)
  return i, j, modes, string.sub(lines, s + #modes, j - 1)
end

-- Returns 1 when applied (or already a member), 2 when the connection is
-- not attached to the channel with presence mode.
local function op_enter(conn, ch, client)
  local lines = R[conn]
  if not lines then return 2 end
  local i, j, modes, members = find_line(lines, ch)
  if not i or not mode_info(modes).presence then return 2 end
  if has_member(members, client) then return 1 end
  member_new(ch, client)
  local line = '\n' .. ch .. '\t' .. modes .. members .. '\t' .. client
  rec_set(conn, string.sub(lines, 1, i - 1) .. line .. string.sub(lines, j), RC[conn])
  return 1
end

local function op_leave(conn, ch, client)
  local lines = R[conn]
  if not lines then return end
  local i, j, modes, members = find_line(lines, ch)
  if not i or not has_member(members, client) then return end
  member_gone(ch, client)
  local line = '\n' .. ch .. '\t' .. modes .. without_member(members, client)
  rec_set(conn, string.sub(lines, 1, i - 1) .. line .. string.sub(lines, j), RC[conn])
end

-- Removes connections of a retired token until about `budget` attachments
-- were removed (a connection is removed whole: at most MAX_CHANNELS);
-- returns how many connections were removed and whether the token is done.
local function reap_token(tok, budget)
  local kt = k_tokconns(tok)
  local purged, work = 0, 0
  while work < budget do
    local conns = redis.call('SRANDMEMBER', kt, 64)
    if #conns == 0 then break end
    local recs = redis.call('HMGET', K_CONNS, unpack(conns))
    local done, gone = {}, {}
    for k, conn in ipairs(conns) do
      if work >= budget then break end
      local r = recs[k]
      done[#done + 1] = conn
      purged = purged + 1
      work = work + 1
      local o, n = nil, 0
      if r then o, n = string.match(r, '^([^\t]*)\t(%d+)') end
      if o == tok then
        work = work + tonumber(n)
        drop_record(r)
        gone[#gone + 1] = conn
      end
    end
    redis.call('SREM', kt, unpack(done))
    if #gone > 0 then redis.call('HDEL', K_CONNS, unpack(gone)) end
  end
  if redis.call('EXISTS', kt) == 0 then
    redis.call('SREM', K_REAPING, tok)
    redis.call('DEL', k_tok(tok))
    return purged, true
  end
  return purged, false
end

-- Starts a call: the common arguments, the clock when the function needs
-- it, and fresh per-call state (a call that failed halfway may have left
-- some behind).
local function begin(argv, clock)
  P = argv[1]
  NSHARDS = tonumber(argv[2])
  MAXLEN = argv[3]
  K_LEASES = P .. ':leases'
  K_REAPING = P .. ':reaping'
  K_TOKSEQ = P .. ':tokseq'
  K_IDX_NAME = P .. ':idx:name'
  K_IDX_BUSY = P .. ':idx:busy'
  K_CONNS = P .. ':conns'
  if clock then
    local time = redis.call('TIME')
    NOW = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  else
    NOW = nil
  end
  M, SHARD = {}, {}
  touched_list, ntouched = {}, 0
  reset_conns()
end
