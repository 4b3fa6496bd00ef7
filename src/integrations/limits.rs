//! Limits and defaults of integration rules, in one place; errors and the
//! configuration table are written from these.

/// Longest target URL, in bytes.
pub const MAX_URL_LEN: usize = 2048;
/// Most channel patterns in one rule.
pub const MAX_PATTERNS: usize = 100;
/// Most custom headers.
pub const MAX_HEADERS: usize = 20;
/// Longest description, in bytes.
pub const MAX_DESCRIPTION_LEN: usize = 1024;
/// Headers a rule may not set: the service sets them.
pub const RESERVED_HEADERS: [&str; 4] = ["content-type", "content-length", "host", "user-agent"];

/// Most rules in one deployment (every replica evaluates every rule on
/// every change).
pub const MAX_RULES: usize = 100;

/// Batched mode: default and most events per request (Ably's batch size).
pub const DEFAULT_MAX_EVENTS: u32 = 1_000;
/// Batched mode's most events per request.
pub const MAX_EVENTS: u32 = 1_000;
/// Batched mode: default least time between requests, ms (Ably: one
/// request a second per rule).
pub const DEFAULT_INTERVAL_MS: u64 = 1_000;
/// Shortest interval a rule may ask for, ms.
pub const MIN_INTERVAL_MS: u64 = 10;
/// Longest interval, ms.
pub const MAX_INTERVAL_MS: u64 = 60_000;

/// Longest debounce, ms.
pub const MAX_DEBOUNCE_MS: u64 = 60_000;
/// Default vacated delay, ms (Centrifugo waits 5 s).
pub const DEFAULT_VACATED_DELAY_MS: u64 = 5_000;
/// Longest vacated delay, ms.
pub const MAX_VACATED_DELAY_MS: u64 = 600_000;

/// Default retention of undelivered events, ms (Ably and Pusher retry for
/// five minutes).
pub const DEFAULT_RETENTION_MS: u64 = 300_000;
/// Shortest retention, ms.
pub const MIN_RETENTION_MS: u64 = 1_000;
/// Longest retention, ms.
pub const MAX_RETENTION_MS: u64 = 86_400_000;

/// Default per-request timeout, ms.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Shortest per-request timeout, ms.
pub const MIN_TIMEOUT_MS: u64 = 100;
/// Longest per-request timeout, ms.
pub const MAX_TIMEOUT_MS: u64 = 60_000;

/// Default requests in flight per target.
pub const DEFAULT_CONCURRENCY: u32 = 8;
/// Most requests in flight per target.
pub const MAX_CONCURRENCY: u32 = 64;

/// First retry after, ms; each next one ×√2 (Ably's schedule), with
/// jitter, up to [`MAX_BACKOFF_MS`].
pub const FIRST_BACKOFF_MS: u64 = 1_000;
/// Longest wait between retries, ms.
pub const MAX_BACKOFF_MS: u64 = 60_000;

/// Dead letters kept per rule (the oldest go first).
pub const MAX_DEAD_LETTERS: usize = 10_000;
/// Most dead letters one read returns.
pub const MAX_DEAD_LETTER_PAGE: usize = 1_000;

/// Queued entries a delivery worker holds in memory at once.
pub const WORKER_WINDOW: usize = 10_000;
/// Changes the source hands the store in one call.
pub const ENQUEUE_BATCH: usize = 512;
/// Changes a replica's source queues while the store is behind; past it
/// the source keeps only the latest change of each channel until the
/// queue is empty.
pub const SOURCE_BUFFER: usize = 100_000;
