-- Applies writes (groups of operations, each within one session) in
-- order, atomically: several concurrent Apply calls of a replica are sent
-- as one call (see src/store/redis/writer.rs).
-- ARGV[4] default lease ms, ARGV[5] number of writes; then per write:
-- session id, '1' to return each operation's channel metrics, the write's
-- sequence (0: none), its number of operations, and five arguments per
-- operation: kind ('A' attach, 'D' detach, 'E' enter, 'L' leave),
-- connection id, channel, the mode bits (attach) or client id (enter,
-- leave), and the channel's event stream shard (keys::shard_of, computed by
-- the caller).
-- Returns per write one string: per operation its status as one byte,
-- followed by the channel's nine counters packed as stored (PACK, 36 bytes)
-- when the write asked for them; -1 when the write's sequence was stale and
-- nothing of it was applied. Status 1 applied, 2 not attached with
-- presence mode, 3 the connection has no room for another channel. One
-- string per write instead of a list of integers: Redis converts a
-- script's reply value by value (about 1,200 instructions per integer,
-- 10 per operation with counters), and the replica parses it value by
-- value too.

local A = ARGV
local ttl = tonum(A[4])
local writes = tonum(A[5])

-- every write's start, and the distinct channels of all of them, checked
-- before anything is written
local starts = {}
local chans, nchans = {}, 0
local i = 6
for w = 1, writes do
  starts[w] = i
  local nops = STRNUM[A[i + 3]] or num(A[i + 3])
  local j = i + 4
  for _ = 1, nops do
    local kind, ch = A[j], A[j + 2]
    if kind ~= 'A' and kind ~= 'D' and kind ~= 'E' and kind ~= 'L' then
      return redis.error_reply('ERR unknown operation kind ' .. tostring(kind))
    end
    if M[ch] == nil then
      M[ch] = A[j + 4]
      nchans = nchans + 1
      chans[nchans] = ch
    end
    j = j + 5
  end
  i = j
end
if i ~= #A + 1 then return redis.error_reply('ERR malformed apply arguments') end

load_metrics(chans, nchans)
local out = {}
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
local cur_tok = nil
for _, session in ipairs(sessions) do
  -- a write not newer than the session's last one is not applied again
  local live = {}
  for _, w in ipairs(by_session[session]) do
    local s = starts[w]
    local seq = STRNUM[A[s + 2]] or num(A[s + 2])
    local stale = false
    if seq > 0 then
      local ks = k_seq(session)
      if seq <= tonum(rcall('GET', ks) or '0') then
        stale = true
      else
        rcall('SET', ks, A[s + 2], 'PX', SEQUENCE_MEMORY_MS)
      end
    end
    if stale then
      out[w] = -1
    else
      live[#live + 1] = w
    end
  end
  if #live > 0 then
    local tok = open_session(session, ttl)
    if cur_tok then
      flush_conns(cur_tok)
      reset_conns()
    end
    cur_tok = tok
    local conns, nc = {}, 0
    for _, w in ipairs(live) do
      local s = starts[w]
      for k = s + 5, s + 5 * (STRNUM[A[s + 3]] or num(A[s + 3])), 5 do
        nc = nc + 1
        conns[nc] = A[k]
      end
    end
    load_conns(tok, conns, nc)
    for _, w in ipairs(live) do
      local s = starts[w]
      local include = A[s + 1] == '1'
      local first, last = s + 4, s + 4 + 5 * ((STRNUM[A[s + 3]] or num(A[s + 3])) - 1)
      -- a write of one operation (a unary call) needs no table of results
      -- and no concatenation
      local one = first == last
      local results, n = one and OUT1 or {}, 0
      for k = first, last, 5 do
        local kind, c, ch, extra = A[k], R[A[k + 1]], A[k + 2], A[k + 3]
        local status = 1
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
  end
end
if cur_tok then flush_conns(cur_tok) end
finish()
return out
