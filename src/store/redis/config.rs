//! How to reach the Redis store and lay out its state.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The hash tag of the state on a Redis Cluster when the configuration
/// names none: the state's one partition.
pub const CLUSTER_HASH_TAG: &str = "p:0";

/// How to reach and lay out the Redis state.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` URL (TLS with rustls; the URL's user and
    /// password, if any, are sent with AUTH). `rediss://` checks the
    /// server's certificate against the system's roots, or against
    /// `tls_ca_file`. With `cluster`, one or more seed nodes of the
    /// cluster, separated by commas.
    pub url: String,
    /// Whether `url` names the seed nodes of a Redis Cluster. The store
    /// then keeps its whole state under one hash tag (`hash_tag`, by
    /// default [`CLUSTER_HASH_TAG`]), so that every call touches one slot,
    /// and reaches the primary serving it through redis-rs's cluster
    /// client, which follows failovers and slot moves.
    pub cluster: bool,
    /// PEM file of the CA certificate(s) that sign the Redis server's
    /// certificate, for a private CA; `None` trusts the system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// Prefix of every key, so deployments can share a Redis.
    pub key_prefix: String,
    /// A hash tag every key carries right after the prefix (`P:{TAG}:…`):
    /// the first braces of a key decide its Redis Cluster slot, so the whole
    /// state then lives in one slot, which a cluster node serves with every
    /// function call and can move between primaries as a whole. `None`
    /// keeps each channel's keys in a slot of their own. The store folds it
    /// into `key_prefix` ([`super::RedisStore::config`] shows it there).
    pub hash_tag: Option<String>,
    /// Replicas that must acknowledge a write (and a CloseSession) before it
    /// is answered as done (`WAIT`), so that a failover to one of them
    /// loses no acknowledged write; 0 answers as soon as the primary ran
    /// it. A write the replicas did not acknowledge within its own time
    /// bound (`timeout`, more for a large batch) answers UNAVAILABLE (it may or may not survive a failover:
    /// the front end retries or re-syncs, as after any failed write).
    pub replica_acks: u32,
    /// Bound on connecting and on every call.
    pub timeout: Duration,
    /// Lease of a new session.
    pub default_ttl: Duration,
    /// Number of event stream shards (of each partition when there are
    /// several: then one).
    pub event_shards: u32,
    /// The partitions the state is split into ([`crate::store::partitioned`]):
    /// 1 keeps it whole. Recorded in Redis by the first replica; one with
    /// another count refuses to serve. Each partition's keys carry the hash
    /// tag [`super::keys::partition_tag`], which overrides `hash_tag`.
    pub partitions: u32,
    /// Changes each event stream keeps, approximately (see `finish` in
    /// `lua/counters.lua`).
    pub stream_max_len: u64,
}

impl RedisConfig {
    /// A configuration with the service defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            cluster: false,
            tls_ca_file: None,
            key_prefix: crate::config::defaults::KEY_PREFIX.into(),
            hash_tag: None,
            replica_acks: 0,
            timeout: crate::config::defaults::REDIS_TIMEOUT,
            default_ttl: crate::config::defaults::SESSION_TTL,
            event_shards: crate::config::defaults::EVENT_SHARDS,
            partitions: 1,
            stream_max_len: crate::config::defaults::STREAM_MAX_LEN,
        }
    }
}

/// The PEM bytes of a CA file, checked to hold at least one certificate.
///
/// # Errors
/// A message naming the file when it cannot be read or holds no PEM
/// certificate.
pub fn read_ca_file(path: &Path) -> std::result::Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(pem)
}
