-- Reads the counters of channels of several partitions in one call: on a
-- Redis Cluster, those of the partitions one primary holds (see
-- src/store/redis/nodes/reads.rs). Each partition's keys lie in a slot of
-- its own, so the function is registered with allow-cross-slot-keys, and
-- with no-writes: it changes nothing.
-- ARGV: per section the number of its keys, then the keys (all of one
-- partition). Returns per section the keys' values (false for a missing
-- key), or false when the partition is not served here: a slot that moved
-- away, or one this node imports but does not serve yet, makes the MGET
-- fail (redis.pcall answers the error), and so does a slot this node is
-- migrating whose keys are not all here yet. The caller then reads that
-- section on its own, routed by its keys.
local A = ARGV
local out, nout = {}, 0
local i, n = 1, #A
while i <= n do
  local len = tonumber(A[i])
  local r = redis.pcall('MGET', unpack(A, i + 1, i + len))
  nout = nout + 1
  if type(r) == 'table' and r.err == nil then
    out[nout] = r
  else
    out[nout] = false
  end
  i = i + len + 1
end
return out
