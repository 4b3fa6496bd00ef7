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
local results = {}
for i = 8, #ARGV, 4 do
  local kind, conn, ch, extra = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local exists = claim(tok, conn)
  local kc = k_conn(conn)
  local status = 1
  if kind == 'A' then
    if not exists then
      redis.call('HSET', kc, 's', tok)
      redis.call('SADD', k_tokconns(tok), conn)
    end
    status = attach(kc, ch, tonumber(extra))
  elseif kind == 'D' then
    if exists then
      detach(kc, ch)
      drop_if_empty(kc, conn, tok)
    end
  elseif kind == 'E' then
    if exists then status = enter(kc, ch, extra) else status = 2 end
  elseif kind == 'L' then
    if exists then leave(kc, ch, extra) end
  else
    return redis.error_reply('ERR unknown operation kind ' .. tostring(kind))
  end
  if include then
    local entry = metrics_of(ch)
    table.insert(entry, 1, status)
    results[#results + 1] = entry
  else
    results[#results + 1] = { status }
  end
end
finish()
return results
