-- Everything a session holds while its lease is alive. ARGV[4] session id.
-- Returns a flat list: connection, channel, mode bits, member count, then
-- that many client ids; repeated.

local tok = rcall('GET', k_sess(ARGV[4]))
if not tok or not lease_alive(tok) then return {} end
local out = {}
local ids = rcall('SMEMBERS', k_tokconns(tok))
local nids = #ids
table.insert(ids, 1, K_CONNS)
local recs = call_list('HMGET', ids, 1, nids + 1)
for i = 1, nids do
  local conn, r = ids[i + 1], recs[i]
  if r and smatch(r, '^[^\t]*') == tok then
    for ch, modes, members in sgmatch(r, LINE) do
      local clients = {}
      for client in sgmatch(members, MEMBER) do clients[#clients + 1] = client end
      out[#out + 1] = conn
      out[#out + 1] = ch
      out[#out + 1] = modes
      out[#out + 1] = tostring(#clients)
      for _, c in ipairs(clients) do out[#out + 1] = c end
    end
  end
end
return out
