-- Everything a session holds while its lease is alive. ARGV[4] session id.
-- Returns a flat list: connection, channel, mode bits, member count, then
-- that many client ids; repeated.

local tok = rcall('GET', k_sess(ARGV[4]))
if not tok or not lease_alive(tok) then return {} end
local out = {}
local conns = rcall('SMEMBERS', k_tokconns(tok))
local recs = read_many('HMGET', { K_CONNS }, conns)
for i, conn in ipairs(conns) do
  local r = recs[i]
  if r and smatch(r, '^[^\t]*') == tok then
    for ch, modes, members in sgmatch(r, '\n([^\t\n]+)\t(%d+)([^\n]*)') do
      local clients = {}
      for client in sgmatch(members, '\t([^\t]+)') do clients[#clients + 1] = client end
      out[#out + 1] = conn
      out[#out + 1] = ch
      out[#out + 1] = modes
      out[#out + 1] = tostring(#clients)
      for _, c in ipairs(clients) do out[#out + 1] = c end
    end
  end
end
return out
