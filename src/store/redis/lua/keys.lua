-- Key names, built as src/store/redis/keys.rs builds them (the layout is
-- documented there), from the prefix each call passes; and the event
-- stream shard of a channel.

-- per call (set by begin()): the common arguments, the keys named after
-- the prefix, and the Redis clock in ms (for functions that read it)
local P, NSHARDS, MAXLEN, NOW
local K_LEASES, K_REAPING, K_IDX_NAME, K_IDX_BUSY, K_CONNS, K_TOTALS

local function k_sess(s) return P .. ':sess:' .. s end
local function k_tok(t) return P .. ':tok:' .. t end
local function k_tokconns(t) return P .. ':tok:' .. t .. ':conns' end
local function k_metrics(ch) return P .. ':{ch:' .. ch .. '}:m' end
local function k_clients(ch) return P .. ':{ch:' .. ch .. '}:cl' end
local function k_events(n) return P .. ':{ev:' .. n .. '}' end

-- The busy index key of a channel with c connections is
-- busy_prefix(c) .. name (domain::list::busy_key).
local BUSY_PREFIX = {}
local function busy_prefix(c)
  local v = sformat(BUSY_FORMAT, BUSY_TOP - c)
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
