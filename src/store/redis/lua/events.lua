-- Event streams, as their readers and snapshots see them (the entries are
-- written by finish(), counters.lua).

-- Whether stream `key` exists, its last generated id and its largest
-- deleted id ('0-0' when none), from one XINFO STREAM.
local function stream_ids(key)
  if rcall('EXISTS', key) == 0 then return false, '0-0', '0-0' end
  local info = rcall('XINFO', 'STREAM', key)
  local last, deleted = '0-0', '0-0'
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
    if info[i] == 'max-deleted-entry-id' then deleted = info[i + 1] end
  end
  return true, last, deleted
end

-- Whether stream id a ('ms-seq') comes after b.
local function id_after(a, b)
  local ams, aseq = smatch(a, '^(%d+)-(%d+)$')
  local bms, bseq = smatch(b, '^(%d+)-(%d+)$')
  ams, aseq, bms, bseq = tonum(ams), tonum(aseq), tonum(bms), tonum(bseq)
  return ams > bms or (ams == bms and aseq > bseq)
end
