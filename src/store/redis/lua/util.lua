-- The library's helpers: standard functions kept as upvalues, numbers to
-- and from strings without the C library's cost, and variadic commands in
-- chunks.
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
-- copy), and hot paths avoid helper calls and globals (BENCHMARKS.md tells
-- how to measure them).

-- Standard functions, kept as upvalues. A Redis function reads globals
-- through its environment's metatable: every `string.find` is two table
-- lookups and a metamethod check, where an upvalue is one load. The library
-- body cannot take them when it loads (only the registration API is
-- visible then), so begin() fills them on the first call (`call.lua`).
local sfind, ssub, smatch, sgmatch, sformat, sbyte, spack, sunpack
local tonum, unpk, band, bxor, mfloor, mmin, mmax, rcall, tconcat, ltype

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
-- arguments: in one call when it fits, else in chunks of the items.
-- Returns the reply; for commands answering one value per item (MGET,
-- HMGET), the values of every chunk in one list. Callers build their
-- argument lists this way (head first), so nothing is copied into a
-- second table. No items, no call: the reply is NO_VALUES (shared, never
-- to be changed).
local NO_VALUES = {}
local function call_list(cmd, list, nhead, n)
  if n <= nhead then return NO_VALUES end
  if n - nhead <= CHUNK then return rcall(cmd, unpk(list, 1, n)) end
  local head = { unpk(list, 1, nhead) }
  local out, no = {}, 0
  for i = nhead + 1, n, CHUNK do
    local args, k = chunk_args(head, list, i, mmin(n, i + CHUNK - 1))
    local replies = rcall(cmd, unpk(args, 1, k))
    if ltype(replies) == 'table' then
      for r = 1, #replies do out[no + r] = replies[r] end
      no = no + #replies
    end
  end
  return out
end
