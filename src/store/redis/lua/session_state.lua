-- Everything a session holds while its lease is alive. ARGV[4] session id.
-- Returns a flat list: connection, channel, mode bits, member count, then
-- that many client ids; repeated.

local tok = redis.call('GET', k_sess(ARGV[4]))
if not tok or not lease_alive(tok) then return {} end
local out = {}
for _, conn in ipairs(redis.call('SMEMBERS', k_tokconns(tok))) do
  local kc = k_conn(conn)
  if redis.call('HGET', kc, 's') == tok then
    local fields = redis.call('HGETALL', kc)
    local modes, members = {}, {}
    local order = {}
    for i = 1, #fields, 2 do
      local f, v = fields[i], fields[i + 1]
      local kind = string.sub(f, 1, 2)
      if kind == 'a:' then
        local ch = string.sub(f, 3)
        modes[ch] = v
        order[#order + 1] = ch
      elseif kind == 'p:' then
        local rest = string.sub(f, 3)
        local sep = string.find(rest, SEP, 1, true)
        if sep then
          local ch = string.sub(rest, 1, sep - 1)
          members[ch] = members[ch] or {}
          table.insert(members[ch], string.sub(rest, sep + 1))
        end
      end
    end
    for _, ch in ipairs(order) do
      local m = members[ch] or {}
      out[#out + 1] = conn
      out[#out + 1] = ch
      out[#out + 1] = modes[ch]
      out[#out + 1] = tostring(#m)
      for _, c in ipairs(m) do out[#out + 1] = c end
    end
  end
end
return out
