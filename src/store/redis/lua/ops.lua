-- The four operations of a write, on a connection's table (records.lua)
-- and its channel's counters (counters.lua). Mirrors the rules of
-- src/domain/state.rs. Each answers its status (ST_*) or nothing.

-- Attaches with the mode bits `modes` (a decimal string), or changes the
-- modes of an attachment: ST_TOO_MANY_CHANNELS when the connection has no
-- room for another channel.
local function op_attach(c, ch, modes)
  if c[FOREIGN] then
    if c[COUNT] >= MAX_CHANNELS and not find_line(c[LINES], ch) then return ST_TOO_MANY_CHANNELS end
    claim(c)
  end
  local lines, n = c[LINES], c[COUNT]
  if not lines then lines, n = '', 0 end
  local m = metrics(ch)
  local mi = mode_info(modes)
  local i, j, old, ms = find_line(lines, ch)
  if i then
    if old == modes then return ST_OK end
    local members = ssub(lines, ms, j - 1)
    local oi = mode_info(old)
    if oi.presence and not mi.presence and members ~= '' then
      for client in sgmatch(members, MEMBER) do member_gone(ch, client) end
      members = ''
    end
    local slots = oi.slots
    for k = 1, #slots do
      local x = slots[k]
      m[x] = m[x] - 1
    end
    lines = ssub(lines, 1, i - 1) .. '\n' .. ch .. '\t' .. modes .. members .. ssub(lines, j)
  else
    if n >= MAX_CHANNELS then return ST_TOO_MANY_CHANNELS end
    m[C] = m[C] + 1
    lines = lines .. '\n' .. ch .. '\t' .. modes
    n = n + 1
  end
  local slots = mi.slots
  for k = 1, #slots do
    local x = slots[k]
    m[x] = m[x] + 1
  end
  rec_set(c, lines, n)
  touch(m)
  return ST_OK
end

local function op_detach(c, ch)
  local lines = c[LINES]
  if not lines or c[FOREIGN] then return end
  local i, j, modes, ms = find_line(lines, ch)
  if not i then return end
  drop_attachment(ch, modes, ssub(lines, ms, j - 1))
  rec_set(c, ssub(lines, 1, i - 1) .. ssub(lines, j), c[COUNT] - 1)
end

-- Enters CLIENT into presence (or finds it there): ST_NOT_PRESENCE_ATTACHED
-- when the connection is not attached to the channel with presence mode.
-- The member goes at the end of the line.
local function op_enter(c, ch, client)
  local lines = c[LINES]
  if not lines then return ST_NOT_PRESENCE_ATTACHED end
  local i, j, modes, ms = find_line(lines, ch)
  if not i or not mode_info(modes).presence then return ST_NOT_PRESENCE_ATTACHED end
  if c[FOREIGN] then claim(c) end
  if member_at(lines, ms, j, client) then return ST_OK end
  member_new(ch, client)
  rec_set(c, ssub(lines, 1, j - 1) .. '\t' .. client .. ssub(lines, j), c[COUNT])
  return ST_OK
end

local function op_leave(c, ch, client)
  local lines = c[LINES]
  if not lines or c[FOREIGN] then return end
  local i, j, _, ms = find_line(lines, ch)
  if not i then return end
  local p = member_at(lines, ms, j, client)
  if not p then return end
  member_gone(ch, client)
  rec_set(c, ssub(lines, 1, p - 1) .. ssub(lines, p + #client + 1), c[COUNT])
end

-- the results of a write of one operation in apply (reused from call to
-- call: only slot 1 is read)
local OUT1 = { false }
