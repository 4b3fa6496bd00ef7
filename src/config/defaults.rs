//! Every default of the service, in one place: the command line's
//! (`occupancy serve`, the client subcommands), [`Config::memory`]'s, the
//! in-memory store's and the Redis store's.
//!
//! A duration has two forms: the value, and the text clap shows in `--help`
//! and parses as the flag's default (clap takes defaults as text). A test
//! checks that each text reads back as its value.
//!
//! [`Config::memory`]: super::Config::memory

use std::time::Duration;

/// Where `occupancy serve` listens, and where the client subcommands look
/// for it.
pub const LISTEN: &str = "127.0.0.1:50051";
/// Prefix of every Redis key.
pub const KEY_PREFIX: &str = "occupancy";
/// Lease of a new session.
pub const SESSION_TTL: Duration = Duration::from_secs(15);
/// [`SESSION_TTL`] as a flag's text.
pub const SESSION_TTL_ARG: &str = "15s";
/// The least time calls on a Redis Cluster go unanswered before the
/// shared connection is replaced (three call timeouts, when longer).
pub const REDIS_STUCK_FLOOR: Duration = Duration::from_secs(5);
/// Partitions of the state on a Redis Cluster when `--partitions` is not
/// given: several per primary of a small cluster, so resharding can
/// spread them, and few enough that a KeepAlive (one call per partition)
/// stays cheap.
pub const CLUSTER_PARTITIONS: u32 = 16;
/// Replicas that acknowledge each write on a Redis Cluster (each primary
/// has at least one in any cluster that fails over).
pub const CLUSTER_REPLICA_ACKS: u32 = 1;
/// Bound on every Redis call and connection attempt.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// [`REDIS_TIMEOUT`] as a flag's text.
pub const REDIS_TIMEOUT_ARG: &str = "1s";
/// How often each replica looks for expired sessions.
pub const REAP_INTERVAL: Duration = Duration::from_millis(250);
/// [`REAP_INTERVAL`] as a flag's text.
pub const REAP_INTERVAL_ARG: &str = "250ms";
/// How often the store is probed for the health service.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// [`HEALTH_INTERVAL`] as a flag's text.
pub const HEALTH_INTERVAL_ARG: &str = "1s";
/// How long open calls may run after SIGTERM/SIGINT.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// [`SHUTDOWN_GRACE`] as a flag's text.
pub const SHUTDOWN_GRACE_ARG: &str = "10s";
/// Quiet time after which a subscription stream gets a heartbeat: well
/// under the idle timeouts of common proxies and load balancers (often a
/// minute).
pub const STREAM_HEARTBEAT: Duration = Duration::from_secs(20);
/// [`STREAM_HEARTBEAT`] as a flag's text.
pub const STREAM_HEARTBEAT_ARG: &str = "20s";
/// Event log shards, in Redis and in memory.
pub const EVENT_SHARDS: u32 = 8;
/// Changes each event log shard keeps, approximately (a Redis stream's
/// MAXLEN, the in-memory log's length).
pub const STREAM_MAX_LEN: u64 = 10_000;
/// Log format of `occupancy serve`.
pub const LOG_FORMAT: &str = "text";
/// HTTP/2 keepalive pings of the gRPC server: connections through NATs
/// and load balancers that drop idle flows stay open.
pub const HTTP2_KEEPALIVE: Duration = Duration::from_secs(20);

// ---- the client subcommands ----

/// How long a client subcommand waits for a call, as a flag's text.
pub const CLIENT_TIMEOUT_ARG: &str = "5s";
/// How long `occupancy health` waits, as a flag's text.
pub const HEALTH_CHECK_TIMEOUT_ARG: &str = "2s";

// ---- the Redis store ----

/// Script calls of merged writes outstanding at once (group commit).
pub const REDIS_WRITES_IN_FLIGHT: usize = 4;
/// Operations merged into one write call at most (a larger write goes
/// alone).
pub const REDIS_MAX_GROUP_OPS: usize = crate::domain::limits::MAX_BATCH;
/// While a write call is in flight, another leaves only once this many
/// operations wait.
pub const REDIS_MIN_GROUP_OPS: usize = 32;
/// On a Redis Cluster: small write calls (below `REDIS_MIN_GROUP_OPS`)
/// outstanding at once over all of a replica's node queues; and calls
/// outstanding at once per node (see `store/redis/nodes.rs`).
pub const REDIS_CLUSTER_WRITE_BUDGET: usize = 2;
/// See [`REDIS_CLUSTER_WRITE_BUDGET`].
pub const REDIS_NODE_WRITES_IN_FLIGHT: usize = 1;
/// Merged reads outstanding at once.
pub const REDIS_READS_IN_FLIGHT: usize = 4;
/// Reads of this many keys or more go straight to Redis, unmerged.
pub const REDIS_MERGE_READS_BELOW: usize = 16;
/// Keys in one merged MGET at most: bounds how long one command holds
/// Redis.
pub const REDIS_MAX_READ_KEYS: usize = 4096;
/// Attachments one reap call may remove (plus at most one connection's
/// worth): bounds how long one call holds Redis.
pub const REDIS_REAP_BUDGET: usize = 2000;
/// Extra time allowed per operation of an Apply batch beyond
/// [`REDIS_TIMEOUT`]: a large batch is one long script.
pub const REDIS_BATCH_ALLOWANCE_PER_OP: Duration = Duration::from_micros(100);
/// The least response timeout of the Redis connection itself, a backstop
/// behind the per-call bound (which is the configured timeout, scaled for
/// large batches).
pub const REDIS_RESPONSE_TIMEOUT_FLOOR: Duration = Duration::from_secs(10);
/// Longest wait between the Redis connection's reconnection attempts.
pub const REDIS_RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_flag_text_reads_back_as_its_value() {
        for (text, value) in [
            (SESSION_TTL_ARG, SESSION_TTL),
            (REDIS_TIMEOUT_ARG, REDIS_TIMEOUT),
            (REAP_INTERVAL_ARG, REAP_INTERVAL),
            (HEALTH_INTERVAL_ARG, HEALTH_INTERVAL),
            (SHUTDOWN_GRACE_ARG, SHUTDOWN_GRACE),
            (STREAM_HEARTBEAT_ARG, STREAM_HEARTBEAT),
        ] {
            assert_eq!(humantime::parse_duration(text).unwrap(), value, "{text}");
        }
        for text in [CLIENT_TIMEOUT_ARG, HEALTH_CHECK_TIMEOUT_ARG] {
            assert!(humantime::parse_duration(text).is_ok(), "{text}");
        }
    }
}
