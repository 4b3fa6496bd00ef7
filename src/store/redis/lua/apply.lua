-- Applies writes (groups of operations, each within one session) in
-- order, atomically: several concurrent Apply calls of a replica are sent
-- as one call (see src/store/redis/writer.rs).
-- ARGV[4] default lease ms, ARGV[5] number of writes; then per write:
-- session id, '1' to return each operation's channel metrics, the write's
-- sequence (0: none), the lease epoch it was built under ('0': no check),
-- a new random token for the lease it may open (see live_token in
-- leases.lua), its owner ('' with access control off), its number of
-- operations, and five arguments per
-- operation: kind ('A' attach, 'D' detach, 'E' enter, 'L' leave),
-- connection id, channel, the mode bits (attach) or client id (enter,
-- leave), and the channel's event stream shard (keys::shard_of, computed by
-- the caller).
-- Returns per write two values: first one string: per operation its status
-- as one byte, followed by the channel's nine counters packed as stored
-- (PACK, PACKED_LEN bytes) when the write asked for them; or
-- REFUSED_STALE when the write's sequence was not above the last one of
-- the session's lease, REFUSED_EPOCH when its epoch was not the session's
-- live lease, REFUSED_OWNER when that lease belongs to another owner,
-- REFUSED_MOVE when an attach or enter of it would move a connection out
-- of a live lease of another owner (nothing of it applied). The statuses
-- are the ST_* constants (ops.lua). Second, the session's token (its lease epoch) after
-- the write, or false when it holds no lease. One string per write instead
-- of a list of integers: Redis converts a script's reply value by value
-- (ten values per operation with counters), and the replica parses it
-- value by value too.
--
-- A session's sequence is kept in its token's hash (field q): a new lease
-- accepts any sequence. A lease is opened only when the session holds a
-- connection after its writes: a refused or empty write leaves none.

local A = ARGV
local ttl = tonum(A[4])
local writes = tonum(A[5])

-- every write's start, and the distinct channels of all of them with
-- their shards, checked before anything is written
local starts = {}
local chans, nchans, shards = {}, 0, {}
local i = 6
for w = 1, writes do
  starts[w] = i
  local nops = STRNUM[A[i + 6]] or num(A[i + 6])
  local j = i + 7
  for _ = 1, nops do
    local kind, ch = A[j], A[j + 2]
    if kind ~= 'A' and kind ~= 'D' and kind ~= 'E' and kind ~= 'L' then
      return redis.error_reply('ERR unknown operation kind ' .. tostring(kind))
    end
    if shards[ch] == nil then
      shards[ch] = A[j + 4]
      nchans = nchans + 1
      chans[nchans] = ch
    end
    j = j + 5
  end
  i = j
end
if i ~= #A + 1 then return redis.error_reply('ERR malformed apply arguments') end

load_metrics(chans, nchans, shards)
local out, epochs = {}, {}
-- Writes are taken session by session (each session's in their order):
-- concurrent writes of different sessions may be applied in any order,
-- and this way each session's lease is opened, and its connections'
-- records read and written back, once per call instead of once per write.
local by_session, sessions = {}, {}
for w = 1, writes do
  local session = A[starts[w]]
  local list = by_session[session]
  if not list then
    list = {}
    by_session[session] = list
    sessions[#sessions + 1] = session
  end
  list[#list + 1] = w
end
for _, session in ipairs(sessions) do
  local tok, deadline = live_token(session)
  -- the lease's length, and its last sequence as a number and as stored;
  -- its owner in the same read (owner_of() then finds it)
  local q, qs, lease_ms = 0, '0', nil
  if tok then
    local v = rcall('HMGET', k_tok(tok), 'ttl', 'q', 'o')
    lease_ms, qs = tonum(v[1]), v[2] or '0'
    q = tonum(qs)
    OWNERS[tok] = v[3] or ''
  end
  local q0 = q
  -- the lease's owner; for a lease this call may open, the owner of its
  -- first write
  local owner = tok and owner_of(tok)
  -- a write of another owner, or built under another lease, is not
  -- applied
  local cand = {}
  for _, w in ipairs(by_session[session]) do
    local s = starts[w]
    local ep = A[s + 3]
    if ep ~= '0' and ep ~= tok then
      out[w] = REFUSED_EPOCH
    elseif owner and owner ~= A[s + 5] then
      out[w] = REFUSED_OWNER
    else
      owner = A[s + 5]
      cand[#cand + 1] = w
    end
  end
  local fresh = false
  local live = {}
  if #cand > 0 then
    if not tok then
      fresh = true
      tok = A[starts[cand[1]] + 4]
    end
    local conns, nc = {}, 0
    for _, w in ipairs(cand) do
      local s = starts[w]
      for k = s + 8, s + 3 + 5 * (STRNUM[A[s + 6]] or num(A[s + 6])), 5 do
        nc = nc + 1
        conns[nc] = A[k]
      end
    end
    load_conns(tok, conns, nc)
    -- then: no attach or enter moving a connection of another owner's
    -- live lease, and a sequence above the lease's last one
    for _, w in ipairs(cand) do
      local s = starts[w]
      local mine = A[s + 5]
      local theirs = false
      for k = s + 7, s + 7 + 5 * ((STRNUM[A[s + 6]] or num(A[s + 6])) - 1), 5 do
        local kind = A[k]
        if kind == 'A' or kind == 'E' then
          local f = R[A[k + 1]][FOREIGN]
          if f and owner_of(f) ~= mine then
            theirs = true
            break
          end
        end
      end
      local seq = STRNUM[A[s + 2]] or num(A[s + 2])
      if theirs then
        out[w] = REFUSED_MOVE
      elseif seq > 0 and seq <= q then
        out[w] = REFUSED_STALE
      else
        if seq > 0 then q, qs = seq, A[s + 2] end
        live[#live + 1] = w
      end
    end
  end
  if #live > 0 then
    for _, w in ipairs(live) do
      local s = starts[w]
      local include = A[s + 1] == '1'
      local first, last = s + 7, s + 7 + 5 * ((STRNUM[A[s + 6]] or num(A[s + 6])) - 1)
      -- a write of one operation (a unary call) needs no table of results
      -- and no concatenation
      local one = first == last
      local results, n = one and OUT1 or {}, 0
      for k = first, last, 5 do
        local kind, c, ch, extra = A[k], R[A[k + 1]], A[k + 2], A[k + 3]
        local status = ST_OK
        if kind == 'A' then
          status = op_attach(c, ch, extra)
        elseif kind == 'D' then
          op_detach(c, ch)
        elseif kind == 'E' then
          status = op_enter(c, ch, extra)
        else
          op_leave(c, ch, extra)
        end
        n = n + 1
        if include then
          local m = M[ch]
          results[n] = spack(OP_PACK, status, m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8], m[9])
        else
          results[n] = STATUS_BYTE[status]
        end
      end
      out[w] = one and results[1] or tconcat(results)
    end
    local holds = flush_conns(tok)
    reset_conns()
    if fresh then
      if holds then
        open_lease(session, tok, ttl, qs, owner)
      else
        tok = nil
      end
    else
      -- The write extends the lease to its full length, unless that
      -- moves the deadline by less than a tenth of it (at most
      -- EXTEND_SLACK_MS): a session writing all the time then rewrites
      -- its deadline (a command, replicated) about once per that slack in
      -- each partition instead of once per call, and its lease still ends
      -- no earlier than nine tenths of its length after its last write.
      local until_ms = NOW + lease_ms
      if until_ms - deadline >= mmin(lease_ms / 10, EXTEND_SLACK_MS) then
        rcall('ZADD', K_LEASES, until_ms, tok)
      end
      if q ~= q0 then rcall('HSET', k_tok(tok), 'q', qs) end
    end
  end
  for _, w in ipairs(by_session[session]) do
    epochs[w] = tok or false
  end
end
finish()
local reply = {}
for w = 1, writes do
  reply[2 * w - 1] = out[w]
  reply[2 * w] = epochs[w]
end
return reply
