-- The start of every function call.

-- Whether the state's slot is migrating away from this node: on a Redis
-- Cluster a command on a missing key of a migrating slot is redirected,
-- so a script reaching it fails there, and a script is not undone: one
-- creating a key while its slot migrates would stop halfway. Every call
-- on a cluster checks first, on the probe key (keys::probe), which never
-- exists: the check fails exactly while the slot migrates (on the node
-- importing it, a call sent there with ASKING is served).
local function migrating()
  return ltype(redis.pcall('EXISTS', P .. ':probe')) == 'table'
end

-- What a call answers when its state's slot is migrating: nothing of it
-- ran, and the cluster client tries it again after a pause.
local MIGRATING = 'TRYAGAIN the state\'s slot is migrating: nothing was changed'

-- Starts a call: the common arguments (ARGV[1] key prefix, ARGV[2] number
-- of event stream shards, 0: no events; ARGV[3] approximate maximum length
-- of each event stream; the function's own arguments follow from
-- ARGV[4]), the Redis clock when the function reads leases, and fresh
-- per-call state (a call that failed halfway may have left some behind).
-- Redis runs one call at a time, so the functions can share that state.
-- On a cluster (the call declares its anchor key) returns an error reply
-- instead, before anything else, while the state's slot migrates.
local function begin(argv, clock, keys)
  if not rcall then
    sfind, ssub, smatch, sgmatch = string.find, string.sub, string.match, string.gmatch
    sformat, sbyte, spack, sunpack = string.format, string.byte, struct.pack, struct.unpack
    tonum, unpk, band, bxor = tonumber, unpack, bit.band, bit.bxor
    mfloor, mmin, mmax, rcall = math.floor, math.min, math.max, redis.call
    tconcat, ltype = table.concat, type
  end
  P = argv[1]
  if keys[1] and migrating() then return redis.error_reply(MIGRATING) end
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
