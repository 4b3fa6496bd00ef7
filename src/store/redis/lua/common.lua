-- Shared prelude of every write script: key names, the clock, counters,
-- and the occupancy rules. Mirrors src/domain/state.rs; the key layout is
-- documented in src/store/redis/keys.rs, which builds the same names.
--
-- ARGV[1] key prefix, ARGV[2] number of event stream shards (0: no events),
-- ARGV[3] approximate maximum length of each event stream; the script's own
-- arguments follow from ARGV[4].

local P = ARGV[1]
local NSHARDS = tonumber(ARGV[2])
local MAXLEN = ARGV[3]

local K_LEASES = P .. ':leases'
local K_REAPING = P .. ':reaping'
local K_TOKSEQ = P .. ':tokseq'
local K_IDX_NAME = P .. ':idx:name'
local K_IDX_BUSY = P .. ':idx:busy'

local function k_sess(s) return P .. ':sess:' .. s end
local function k_tok(t) return P .. ':tok:' .. t end
local function k_tokconns(t) return P .. ':tok:' .. t .. ':conns' end
local function k_conn(c) return P .. ':conn:' .. c end
local function k_metrics(ch) return P .. ':{ch:' .. ch .. '}:m' end
local function k_clients(ch) return P .. ':{ch:' .. ch .. '}:cl' end
local function k_events(n) return P .. ':{ev:' .. n .. '}' end
local function k_seq(s) return P .. ':seq:' .. s end
-- as SEQUENCE_MEMORY_MS in src/domain/state.rs
local SEQUENCE_MEMORY_MS = 600000

local time = redis.call('TIME')
local NOW = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

-- metric fields, in the order of Category::ALL
local FIELDS = { 'c', 'pub', 'sub', 'pc', 'pm', 'ps', 'op', 'os', 'pcl' }
-- mode bit -> metric field
local MODE_BITS = { 1, 2, 4, 8, 16, 32 }
local MODE_FIELDS = { [1] = 'pub', [2] = 'sub', [4] = 'pc', [8] = 'ps', [16] = 'op', [32] = 'os' }
local PRESENCE = 4
local SEP = '\0'

local function has(modes, b) return bit.band(modes, b) ~= 0 end

local function busy_key(c, ch) return string.format('%010.0f', 4294967295 - c) .. ':' .. ch end

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

local function metrics_of(ch)
  local v = redis.call('HMGET', k_metrics(ch), unpack(FIELDS))
  local out = {}
  for i = 1, #FIELDS do out[i] = tonumber(v[i]) or 0 end
  return out
end

-- channels changed by this script, in first-touch order
local touched, touched_list = {}, {}
local function touch(ch)
  if not touched[ch] then
    touched[ch] = true
    touched_list[#touched_list + 1] = ch
  end
end

-- Appends one event per changed channel with its metrics after the script.
local function finish()
  if NSHARDS == 0 then return end
  for _, ch in ipairs(touched_list) do
    local m = metrics_of(ch)
    redis.call('XADD', k_events(shard_of(ch)), 'MAXLEN', '~', MAXLEN, '*', 'c', ch, 'm', table.concat(m, ','))
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

local function set_connections(ch, before, after)
  if before == after then return end
  if before > 0 then redis.call('ZREM', K_IDX_BUSY, busy_key(before, ch)) end
  if after > 0 then
    redis.call('ZADD', K_IDX_BUSY, 0, busy_key(after, ch))
    if before == 0 then redis.call('ZADD', K_IDX_NAME, 0, ch) end
  else
    redis.call('ZREM', K_IDX_NAME, ch)
    redis.call('DEL', k_metrics(ch), k_clients(ch))
  end
end

local function leave(kc, ch, client)
  if redis.call('HDEL', kc, 'p:' .. ch .. SEP .. client) == 0 then return end
  redis.call('HINCRBY', kc, 'n:' .. ch, -1)
  local km = k_metrics(ch)
  redis.call('HINCRBY', km, 'pm', -1)
  local n = redis.call('HINCRBY', k_clients(ch), client, -1)
  if n <= 0 then
    redis.call('HDEL', k_clients(ch), client)
    redis.call('HINCRBY', km, 'pcl', -1)
  end
  touch(ch)
end

-- Removes every presence member of the connection on the channel.
local function leave_all(kc, ch)
  local n = tonumber(redis.call('HGET', kc, 'n:' .. ch))
  if not n or n <= 0 then return end
  local want = 'p:' .. ch .. SEP
  local fields = redis.call('HKEYS', kc)
  for _, f in ipairs(fields) do
    if string.sub(f, 1, #want) == want then
      leave(kc, ch, string.sub(f, #want + 1))
    end
  end
  redis.call('HDEL', kc, 'n:' .. ch)
end

local function enter(kc, ch, client)
  local modes = tonumber(redis.call('HGET', kc, 'a:' .. ch))
  if not modes or not has(modes, PRESENCE) then return 2 end
  if redis.call('HSETNX', kc, 'p:' .. ch .. SEP .. client, 1) == 0 then return 1 end
  redis.call('HINCRBY', kc, 'n:' .. ch, 1)
  local km = k_metrics(ch)
  redis.call('HINCRBY', km, 'pm', 1)
  if redis.call('HINCRBY', k_clients(ch), client, 1) == 1 then
    redis.call('HINCRBY', km, 'pcl', 1)
  end
  touch(ch)
  return 1
end

-- as MAX_CHANNELS_PER_CONNECTION in src/domain/ops.rs
local MAX_CHANNELS = 1000

-- Returns 1 when applied, 3 when the connection has no room for another
-- channel.
local function attach(kc, ch, modes)
  local field = 'a:' .. ch
  local old = redis.call('HGET', kc, field)
  if old and tonumber(old) == modes then return 1 end
  if not old then
    if tonumber(redis.call('HGET', kc, 'na') or '0') >= MAX_CHANNELS then return 3 end
    redis.call('HINCRBY', kc, 'na', 1)
  end
  local km = k_metrics(ch)
  if old then
    old = tonumber(old)
    if has(old, PRESENCE) and not has(modes, PRESENCE) then leave_all(kc, ch) end
    for _, b in ipairs(MODE_BITS) do
      if has(old, b) then redis.call('HINCRBY', km, MODE_FIELDS[b], -1) end
    end
  else
    local c = redis.call('HINCRBY', km, 'c', 1)
    set_connections(ch, c - 1, c)
  end
  for _, b in ipairs(MODE_BITS) do
    if has(modes, b) then redis.call('HINCRBY', km, MODE_FIELDS[b], 1) end
  end
  redis.call('HSET', kc, field, modes)
  touch(ch)
  return 1
end

local function detach(kc, ch)
  local field = 'a:' .. ch
  local old = redis.call('HGET', kc, field)
  if not old then return end
  old = tonumber(old)
  leave_all(kc, ch)
  redis.call('HDEL', kc, field)
  redis.call('HINCRBY', kc, 'na', -1)
  local km = k_metrics(ch)
  for _, b in ipairs(MODE_BITS) do
    if has(old, b) then redis.call('HINCRBY', km, MODE_FIELDS[b], -1) end
  end
  local c = redis.call('HINCRBY', km, 'c', -1)
  set_connections(ch, c + 1, c)
  touch(ch)
end

-- Removes every attachment (and presence member) of a connection, and the
-- connection itself. The caller has taken it out of its token's set.
local function purge_conn(conn)
  local kc = k_conn(conn)
  local fields = redis.call('HKEYS', kc)
  for _, f in ipairs(fields) do
    if string.sub(f, 1, 2) == 'a:' then detach(kc, string.sub(f, 3)) end
  end
  redis.call('DEL', kc)
end

-- Deletes the connection's record once it has no attachment left.
local function drop_if_empty(kc, conn, tok)
  if tonumber(redis.call('HGET', kc, 'na') or '0') <= 0 then
    redis.call('DEL', kc)
    redis.call('SREM', k_tokconns(tok), conn)
  end
end

-- Makes tok the owner of conn, if the connection exists; returns whether it
-- does. A connection owned by another live session moves whole (a resume
-- on another front end); one owned by a dead session is purged first, so
-- its old state is removed exactly once.
local function claim(tok, conn)
  local kc = k_conn(conn)
  local owner = redis.call('HGET', kc, 's')
  if not owner then return false end
  if owner == tok then return true end
  redis.call('SREM', k_tokconns(owner), conn)
  if lease_alive(owner) then
    redis.call('HSET', kc, 's', tok)
    redis.call('SADD', k_tokconns(tok), conn)
    return true
  end
  purge_conn(conn)
  return false
end

-- Purges connections of a retired token until about `budget` attachments
-- were removed (a connection is removed whole: at most MAX_CHANNELS);
-- returns how many connections were purged and whether the token is done.
local function reap_token(tok, budget)
  local purged, work = 0, 0
  while work < budget do
    local conn = redis.call('SPOP', k_tokconns(tok))
    if not conn then break end
    purged = purged + 1
    local kc = k_conn(conn)
    if redis.call('HGET', kc, 's') == tok then
      work = work + 1 + tonumber(redis.call('HGET', kc, 'na') or '0')
      purge_conn(conn)
    else
      work = work + 1
    end
  end
  if redis.call('SCARD', k_tokconns(tok)) == 0 then
    redis.call('SREM', K_REAPING, tok)
    redis.call('DEL', k_tok(tok), k_tokconns(tok))
    return purged, true
  end
  return purged, false
end
