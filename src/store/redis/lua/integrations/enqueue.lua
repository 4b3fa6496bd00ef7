-- Enqueues the entries one shard's changes make for the integration rules
-- (IntegrationStore::enqueue; the decision is integrations::entries::entries_for,
-- ported here, and integrations::store::plan in Rust does the same).
--
-- KEYS[1] version, KEYS[2] high-water marks, KEYS[3] last metrics,
-- KEYS[3 + i] the queue of the call's rule i (1-based).
-- ARGV[1] the rules version the caller evaluated, ARGV[2] the shard,
-- ARGV[3] the number of rules R, then per rule its want bits and category
-- bits; then per change five values: position `ms-seq`, channel, metrics
-- (nine decimals joined by commas), commit time ms, and the indexes
-- (0-based, joined by commas) of the rules covering the channel.
--
-- Returns the number of entries appended, or -1 when the version is not
-- ARGV[1] (nothing done).
--
-- Numbers stay strings: positions are pairs of u64 and metrics u32, written
-- by Rust in canonical decimal (no sign, no leading zeros), so two values
-- are equal exactly when their strings are, and ordered by length first,
-- then digit by digit. Lua's doubles would be exact for the metrics but
-- not for every u64, and Lua's `<` on strings follows the locale.

local band, sbyte, sfind, sub = bit.band, string.byte, string.find, string.sub
local rcall = redis.call

if (rcall('GET', KEYS[1]) or '0') ~= ARGV[1] then
  return -1
end

-- a < b for canonical decimals
local function less(a, b)
  if #a ~= #b then return #a < #b end
  for i = 1, #a do
    local x, y = sbyte(a, i), sbyte(b, i)
    if x ~= y then return x < y end
  end
  return false
end

-- position a < position b
local function before(a, b)
  local da, db = sfind(a, '-', 1, true), sfind(b, '-', 1, true)
  local ma, mb = sub(a, 1, da - 1), sub(b, 1, db - 1)
  if ma ~= mb then return less(ma, mb) end
  return less(sub(a, da + 1), sub(b, db + 1))
end

local function split(s)
  local t = {}
  for v in string.gmatch(s, '[^,]+') do t[#t + 1] = v end
  return t
end

local ZERO = '0,0,0,0,0,0,0,0,0'
local nrules = tonumber(ARGV[3])
local wants, cats = {}, {}
for i = 0, nrules - 1 do
  wants[i] = tonumber(ARGV[4 + 2 * i])
  cats[i] = tonumber(ARGV[5 + 2 * i])
end

local hw = rcall('HGET', KEYS[2], ARGV[2]) or '0-0'
local top = nil
local last = {} -- channel -> metrics string or false (none), this call's view
local appended = 0

for e = 4 + 2 * nrules, #ARGV, 5 do
  local pos, ch, now, ts, covering = ARGV[e], ARGV[e + 1], ARGV[e + 2], ARGV[e + 3], ARGV[e + 4]
  if before(hw, pos) then
    if top == nil or before(top, pos) then top = pos end
    local prev = last[ch]
    if prev == nil then prev = rcall('HGET', KEYS[3], ch) or false end
    local p, n = split(prev or ZERO), split(now)
    local was, is = p[1] ~= '0', n[1] ~= '0'
    local flip = was ~= is
    for idx in string.gmatch(covering, '%d+') do
      local r = tonumber(idx)
      if r < nrules then
        local key, w, c = KEYS[4 + r], wants[r], cats[r]
        local function add(kind, f)
          rcall('XADD', key, '*', 'c', ch, 'k', kind, 'f', f, 'm', now, 't', ts)
          appended = appended + 1
        end
        if flip and is and band(w, 2) ~= 0 then add('+', '1') end
        if band(w, 1) ~= 0 then
          local changed = c == 0
          for i = 1, 9 do
            if changed then break end
            if band(c, 2 ^ (i - 1)) ~= 0 and p[i] ~= n[i] then changed = true end
          end
          if changed or flip then add('o', flip and '1' or '0') end
        end
        if flip and not is and band(w, 4) ~= 0 then add('-', '1') end
      end
    end
    if is then
      last[ch] = now
      rcall('HSET', KEYS[3], ch, now)
    else
      last[ch] = false
      rcall('HDEL', KEYS[3], ch)
    end
  end
end

if top ~= nil then rcall('HSET', KEYS[2], ARGV[2], top) end
return appended
