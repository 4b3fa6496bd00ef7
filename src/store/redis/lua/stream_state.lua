-- State of one event stream, for a reader (re)starting on it.
-- ARGV[4] shard. Returns {exists, last-generated-id, max-deleted-entry-id}.

local exists, last, deleted = stream_ids(k_events(tonum(ARGV[4])))
return { exists and 1 or 0, last, deleted }
