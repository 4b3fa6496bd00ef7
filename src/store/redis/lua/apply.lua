-- Applies a batch of operations within one session, atomically.
-- ARGV[4] session id, ARGV[5] default lease ms, ARGV[6] '1' to return each
-- operation's channel metrics, ARGV[7] the batch's sequence (0: none);
-- then four arguments per operation:
-- kind ('A' attach, 'D' detach, 'E' enter, 'L' leave), connection id,
-- channel, and the mode bits (attach) or client id (enter, leave).
-- Returns one entry per operation: {status} or {status, metric...}, with
-- status 1 applied, 2 not attached with presence mode, 3 the connection
-- has no room for another channel; or {{-1}} when the
-- sequence was stale and nothing was applied.

-- the distinct connections and channels of the batch, checked before
-- anything is written
local conns, chans, seen_conn, seen_chan = {}, {}, {}, {}
for i = 8, #ARGV, 4 do
  local kind, conn, ch = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if kind ~= 'A' and kind ~= 'D' and kind ~= 'E' and kind ~= 'L' then
    return redis.error_reply('ERR unknown operation kind ' .. tostring(kind))
  end
  if not seen_conn[conn] then
    seen_conn[conn] = true
    conns[#conns + 1] = conn
  end
  if not seen_chan[ch] then
    seen_chan[ch] = true
    chans[#chans + 1] = ch
  end
end

-- a batch not newer than the session's last one is not applied again
local seq = tonumber(ARGV[7])
if seq > 0 then
  local ks = k_seq(ARGV[4])
  local last = tonumber(redis.call('GET', ks) or '0')
  if seq <= last then return { { -1 } } end
  redis.call('SET', ks, ARGV[7], 'PX', SEQUENCE_MEMORY_MS)
end

local tok = open_session(ARGV[4], tonumber(ARGV[5]))
local include = ARGV[6] == '1'
load_metrics(chans)
load_conns(tok, conns)
local results = {}
for i = 8, #ARGV, 4 do
  local kind, conn, ch, extra = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local status = 1
  if kind == 'A' then
    status = op_attach(tok, conn, ch, tonumber(extra))
  elseif kind == 'D' then
    op_detach(conn, ch)
  elseif kind == 'E' then
    status = op_enter(conn, ch, extra)
  else
    op_leave(conn, ch, extra)
  end
  local entry = { status }
  if include then
    for _, v in ipairs(M[ch]) do entry[#entry + 1] = v end
  end
  results[#results + 1] = entry
end
flush_conns(tok)
finish()
return results
