//! Every limit of the service, in one place: what a request may hold, what
//! a connection or a session may hold, and the bounds on the service's own
//! work per subscriber. Error messages are formatted from these constants,
//! never from a number written again.
//!
//! The Redis store's Lua library enforces [`MAX_CHANNELS_PER_CONNECTION`]
//! too; its copy is generated from this constant.

use std::time::Duration;

// ---- identifiers ----

/// Longest channel name, in bytes (also the longest name prefix).
pub const MAX_CHANNEL_LEN: usize = 1024;
/// Longest session, connection or client id, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Longest API key id, in bytes.
pub const MAX_KEY_ID_LEN: usize = 64;
/// Longest event id (`resume_from`, `Last-Event-ID`) taken, in bytes: far
/// more than an id of the most event shards needs.
pub const MAX_EVENT_ID_LEN: usize = 4096;
/// Longest listing cursor taken, in bytes (a cursor holds one index key).
pub const MAX_CURSOR_LEN: usize = 2 * MAX_CHANNEL_LEN;

// ---- writes ----

/// Largest number of operations in one Apply batch.
pub const MAX_BATCH: usize = 10_000;
/// Channels one connection may be attached to at once. Bounds the work of
/// removing a connection (a lease expiry removes its connections whole).
pub const MAX_CHANNELS_PER_CONNECTION: usize = 1_000;
/// Largest number of attachments in one SyncSession.
pub const MAX_SYNC_ATTACHMENTS: usize = 50_000;
/// Shortest session lease a client or operator may ask for.
pub const MIN_SESSION_TTL: Duration = Duration::from_secs(1);
/// Longest session lease.
pub const MAX_SESSION_TTL: Duration = Duration::from_secs(600);
/// A write extends its session's lease to the lease's full length; a store
/// may skip an extension that would move the deadline by less than a tenth
/// of the length or this much, whichever is less. The Redis store does: a
/// session writing all the time then rewrites its deadline about this
/// often instead of with every call. A lease so ends no earlier than nine
/// tenths of its length after the session's last write; KeepAlive always
/// extends it in full.
pub const LEASE_EXTEND_SLACK: Duration = Duration::from_secs(1);

// ---- reads ----

/// Page size of a listing that asks for none.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page size of a listing.
pub const MAX_LIMIT: u32 = 1000;
/// Largest number of channels in one batch read.
pub const MAX_BATCH_GET: usize = 1000;
/// Largest number of named channels in one subscription.
pub const MAX_SUBSCRIBE_CHANNELS: usize = 1000;
/// Longest debounce window of a subscription, in milliseconds.
pub const MAX_DEBOUNCE_MS: u32 = 60_000;

// ---- transport ----

/// Largest request message the service decodes (gRPC's usual default,
/// set explicitly on every service).
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

// ---- operator settings ----

/// Longest period of the reaper, the health probe and stream heartbeats.
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// Longest shutdown grace period.
pub const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(600);
/// Most Redis event stream shards (event ids carry a position per shard).
pub const MAX_EVENT_SHARDS: u32 = 256;
/// Most partitions of the Redis state (each has its own write queue, event
/// stream reader and event shard).
pub const MAX_PARTITIONS: u32 = MAX_EVENT_SHARDS;
/// Fewest changes a Redis event stream shard may be set to keep.
pub const MIN_STREAM_MAX_LEN: u64 = 100;

// ---- the service's own work ----

/// Events queued in a subscription's inbox before it keeps only the newest
/// per channel: what a subscriber that stops reading may cost.
pub const INBOX_QUEUE: usize = 1024;
/// Channels read per page of a subscription's snapshot under a prefix (a
/// subscriber holds one page at a time).
pub const SNAPSHOT_PAGE: u32 = 1000;
/// Event log entries read per call when a subscription resumes.
pub const HISTORY_PAGE: usize = 1000;
/// Bound on the event log pages read per shard when a subscription
/// resumes (far more than a trimmed log holds).
pub const MAX_HISTORY_PAGES: usize = 10_000;
/// Reap rounds per reaper tick at most, so a backlog cannot starve
/// shutdown.
pub const MAX_REAP_ROUNDS_PER_TICK: usize = 100;

/// A duration as people write it in flags (`15s`, `10m`, `250ms`).
pub fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_flags_take_them() {
        assert_eq!(human(MIN_SESSION_TTL), "1s");
        assert_eq!(human(MAX_SESSION_TTL), "10m");
        assert_eq!(human(MAX_INTERVAL), "1m");
    }
}
