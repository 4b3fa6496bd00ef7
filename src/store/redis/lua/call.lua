-- The start of every function call.

-- Starts a call: the common arguments (ARGV[1] key prefix, ARGV[2] number
-- of event stream shards, 0: no events; ARGV[3] approximate maximum length
-- of each event stream; the function's own arguments follow from
-- ARGV[4]), the Redis clock when the function reads leases, and fresh
-- per-call state (a call that failed halfway may have left some behind).
-- Redis runs one call at a time, so the functions can share that state.
local function begin(argv, clock)
  if not rcall then
    sfind, ssub, smatch, sgmatch = string.find, string.sub, string.match, string.gmatch
    sformat, sbyte, spack, sunpack = string.format, string.byte, struct.pack, struct.unpack
    tonum, unpk, band, bxor = tonumber, unpack, bit.band, bit.bxor
    mfloor, mmin, mmax, rcall = math.floor, math.min, math.max, redis.call
    tconcat, ltype = table.concat, type
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
