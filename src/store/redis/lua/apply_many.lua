-- Runs the apply calls of several partitions in one call: on a Redis
-- Cluster, those of the partitions one primary holds (see
-- src/store/redis/nodes.rs). Each partition's state lies in a slot of its
-- own, so the function is registered with allow-cross-slot-keys; each
-- section is the apply function run for one partition, with everything it
-- guarantees, and the call as a whole is atomic like any other.
-- ARGV[1] '1' to run only the sections whose partition is on this node
-- (its anchor key, keys::anchor, answers here: a cluster); then per
-- section the number of its arguments, and the arguments of the apply
-- call of its partition (from its key prefix on, as `apply` takes them).
-- Returns per section the reply of `apply`, or false when the partition
-- is not on this node (nothing of it ran: the caller sends it on its own,
-- routed by its own key).
--
-- The check reads the partition's anchor before anything of it runs: a
-- slot that moved away, or that this node imports but does not serve yet,
-- makes that read fail (redis.pcall answers the error), and resharding
-- moves a slot's keys in one MIGRATE (README), so a partition whose
-- anchor is here has all its state here. The same read takes the
-- partition's probe key, which never exists (migrating() in call.lua):
-- while the slot migrates away, a read of a missing key there fails, as
-- a key the section would create could not be written here. (On a node
-- importing the slot, a call sent with ASKING fails the two-key read too,
-- and its sections are sent again on their own, each checked with its
-- probe alone.)
local A = ARGV
local check = A[1] == '1'
-- (each section is checked here: its own call must not check again, nor
-- answer an error in the middle of this one)
local NO_KEYS = {}
local out, nout = {}, 0
local i, n = 2, #A
while i <= n do
  local len = tonumber(A[i])
  local argv = {}
  for k = 1, len do argv[k] = A[i + k] end
  i = i + len + 1
  nout = nout + 1
  if check and redis.pcall('EXISTS', argv[1] .. ':anchor', argv[1] .. ':probe') ~= 1 then
    out[nout] = false
  else
    out[nout] = f_apply(NO_KEYS, argv)
  end
end
return out
