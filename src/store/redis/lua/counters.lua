-- Channel counters: read once per call, changed in Lua, written back with
-- the indexes, the app-wide totals and the event entries by finish().
-- Mirrors src/domain/metrics.rs and src/domain/state.rs.

-- A channel's counters are one string: the slots as unsigned 32-bit
-- little-endian integers (PACK, PACKED_LEN bytes; absent: all zero). It is
-- also the body of the channel's events, and how every function answers
-- counters. Packed rather than text: one struct call reads or writes all
-- nine, where parsing a comma separated list took nine tonumber calls
-- (glibc strtod) and a gmatch, a large share of an Apply operation.

-- The counters of values[1..n] (each as stored, or false) as one string,
-- the way list and snapshot answer them: PACKED_LEN bytes per channel,
-- zero for absent or malformed counters.
local function packed_list(values, n)
  local out, zero = {}, nil
  for i = 1, n do
    local v = values[i]
    if not v or #v ~= PACKED_LEN then
      zero = zero or spack(PACK, 0, 0, 0, 0, 0, 0, 0, 0, 0)
      v = zero
    end
    out[i] = v
  end
  return tconcat(out)
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
local M = {}

-- Reads the counters of the channels names[1..n], which have no table
-- yet, in one MGET, and makes their tables; shards, when given, maps a
-- name to its event stream shard (a string) as the caller computed it.
local function load_metrics(names, n, shards)
  if n == 0 then return end
  local keys = {}
  for i = 1, n do keys[i] = k_metrics(names[i]) end
  local vals = call_list('MGET', keys, 0, n)
  for i = 1, n do
    local ch, v = names[i], vals[i]
    local a, b, c, d, e, f, g, h, k = 0, 0, 0, 0, 0, 0, 0, 0, 0
    if v and #v == PACKED_LEN then a, b, c, d, e, f, g, h, k = sunpack(PACK, v) end
    M[ch] = { a, b, c, d, e, f, g, h, k, a, false, keys[i], shards and shards[ch] or false, ch, e }
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

-- Per mode bits (as the decimal string a record holds): the counter
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
