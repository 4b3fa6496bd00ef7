-- Applies a batch of operations within one session, atomically.
-- ARGV[4] session id, ARGV[5] default lease ms, ARGV[6] '1' to return each
-- operation's channel metrics, ARGV[7] the batch's sequence (0: none);
-- then five arguments per operation:
-- kind ('A' attach, 'D' detach, 'E' enter, 'L' leave), connection id,
-- channel, the mode bits (attach) or client id (enter, leave), and the
-- channel's event stream shard (keys::shard_of, computed by the caller).
-- Returns one entry per operation: {status} or {status, metric...}, with
-- status 1 applied, 2 not attached with presence mode, 3 the connection
-- has no room for another channel; or {{-1}} when the
-- sequence was stale and nothing was applied.

local A = ARGV
local FIRST, STEP = 8, 5

-- the distinct connections and channels of the batch, checked before
-- anything is written
local conns, chans, seen_conn = {}, {}, {}
local nconns, nchans = 0, 0
for i = FIRST, #A, STEP do
  local kind, conn, ch = A[i], A[i + 1], A[i + 2]
  if kind ~= 'A' and kind ~= 'D' and kind ~= 'E' and kind ~= 'L' then
    return redis.error_reply('ERR unknown operation kind ' .. tostring(kind))
  end
  if not seen_conn[conn] then
    seen_conn[conn] = true
    nconns = nconns + 1
    conns[nconns] = conn
  end
  if not SHARD[ch] then
    SHARD[ch] = A[i + 4]
    nchans = nchans + 1
    chans[nchans] = ch
  end
end

-- a batch not newer than the session's last one is not applied again
local seq = tonumber(A[7])
if seq > 0 then
  local ks = k_seq(A[4])
  local last = tonumber(redis.call('GET', ks) or '0')
  if seq <= last then return { { -1 } } end
  redis.call('SET', ks, A[7], 'PX', SEQUENCE_MEMORY_MS)
end

local tok = open_session(A[4], tonumber(A[5]))
local include = A[6] == '1'
load_metrics(chans)
load_conns(tok, conns)
local results = {}
local n = 0
for i = FIRST, #A, STEP do
  local kind, conn, ch, extra = A[i], A[i + 1], A[i + 2], A[i + 3]
  local status = 1
  if kind == 'A' then
    status = op_attach(conn, ch, extra)
  elseif kind == 'D' then
    op_detach(conn, ch)
  elseif kind == 'E' then
    status = op_enter(conn, ch, extra)
  else
    op_leave(conn, ch, extra)
  end
  local entry = { status }
  if include then
    local m = M[ch]
    for k = 1, 9 do entry[k + 1] = m[k] end
  end
  n = n + 1
  results[n] = entry
end
flush_conns(tok)
finish()
return results
