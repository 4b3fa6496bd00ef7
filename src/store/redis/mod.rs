//! The Redis store: state shared by any number of replicas.
//!
//! Every change is one call of a Lua function (files under `lua/`, loaded
//! as one Redis function library: `functions.rs`), so a change is atomic
//! and counts are maintained incrementally: reading a channel is one key
//! whatever its size. Concurrent writes of a replica are merged into one
//! call (`writer.rs`; with partitions, one call per node: `nodes.rs`),
//! concurrent small reads into one MGET (`reads.rs`),
//! and a call reads and writes everything a batch touches with a few
//! variadic commands (the layout is in [`keys`]). Lease deadlines use the
//! Redis clock (`TIME`), so replicas with skewed clocks agree on when a
//! session expires.
//!
//! Where to look: `codec/` turns a write into the apply function's
//! arguments and reads every function's reply; `config.rs` holds
//! [`RedisConfig`]; `conn.rs` reaches one Redis or a Redis Cluster;
//! `replication.rs` makes writes wait for replicas; `failure.rs` says which
//! Redis errors are UNAVAILABLE; `nodes.rs` merges the writes of a
//! partitioned store per node;
//! `reader.rs` follows the event streams; `integrations/` keeps the
//! integration rules and queues; `health.rs` is the health check, and
//! `layout.rs` refuses calls while the layout disagrees with Redis's
//! record; this file is the [`Store`] implementation.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{ChangeSink, History, ReapReport, Snapshot, Store};
use crate::domain::{
    Applied, Batch, ChannelName, HeldAttachment, KeepAliveOutcome, ListPage, ListQuery, Metrics, Pos, SessionId, Totals,
};
use crate::error::{Error, Result};
use crate::store::not_owner;
use crate::store::outage::OutageLog;

mod codec;
mod config;
mod conn;
mod failure;
mod functions;
mod group;
mod health;
mod integrations;
pub mod keys;
mod layout;
mod nodes;
mod reader;
mod reads;
mod replication;
mod writer;

pub use config::{read_ca_file, RedisConfig, CLUSTER_HASH_TAG};
pub use conn::seed_urls;
pub use failure::is_unavailable;
pub use health::EVENT_SHARDS_RECORD;
pub use integrations::RedisIntegrations;

use codec::Closed;
use conn::{Conn, Topology};
use failure::within;
use functions::{invoke, Function};
use replication::Replication;

/// Attachments a reap round may remove in one script call (plus at most
/// one connection's worth); bounds how long one call holds Redis.
const REAP_BUDGET: usize = crate::config::defaults::REDIS_REAP_BUDGET;

/// Extra time allowed per operation of an Apply batch beyond the timeout.
const BATCH_ALLOWANCE_PER_OP: Duration = crate::config::defaults::REDIS_BATCH_ALLOWANCE_PER_OP;

/// Occupancy state in Redis.
#[derive(Clone)]
pub struct RedisStore {
    topology: Topology,
    conn: Conn,
    cfg: RedisConfig,
    /// The group commit queue of writes, started on first use (inside the
    /// runtime).
    writes: Arc<std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<writer::Job>>>,
    /// The read queue (`reads.rs`), started on first use.
    reads: Arc<std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<reads::Read>>>,
    /// Integration rules and queues, on the same connection.
    integrations: Arc<RedisIntegrations>,
    /// The replicas a write waits for.
    replication: Replication,
    /// The key recording the partition count, checked by this store's
    /// health checks (one store of a deployment's partitions checks it).
    partitions_record: Option<String>,
    /// The event stream readers' outage log, shared by a deployment's
    /// partitions: an outage is logged once, not once per partition.
    feed_outage: Arc<OutageLog>,
    /// With partitions: the node queues their writes go through, and this
    /// store's partition (see `nodes.rs`).
    node_writes: Option<(Arc<nodes::NodeWriter>, usize)>,
    /// Refuses calls while the layout disagrees with Redis's record
    /// (`layout.rs`); shared by a replica's partitions.
    gate: Arc<layout::Gate>,
}

/// Reads merged reads' keys with one MGET.
struct MgetFetch {
    conn: Conn,
    timeout: Duration,
}

impl reads::Fetch for MgetFetch {
    async fn mget(&self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>> {
        crate::telemetry::store().merged_read(keys.len());
        let mut cmd = redis::cmd("MGET");
        cmd.arg(keys);
        let mut conn = self.conn.clone();
        within("get", self.timeout, cmd.query_async(&mut conn)).await
    }
}

/// Sends merged writes as one call of the apply script.
#[derive(Clone)]
struct ApplySender {
    conn: Conn,
    cfg: RedisConfig,
    replication: Replication,
}

impl writer::Sender for ApplySender {
    async fn send(&self, jobs: &[writer::Job]) -> Result<Vec<Applied>> {
        let mut inv = functions::call(&self.cfg, Function::Apply);
        let ttl_ms = self.cfg.default_ttl.as_millis() as u64;
        let total = codec::apply_args(&mut inv, ttl_ms, self.cfg.event_shards, jobs);
        let mut conn = self.conn.clone();
        // a batch of many operations is one long script: allow for it on
        // top of the timeout
        let limit = self.cfg.timeout + BATCH_ALLOWANCE_PER_OP * total as u32;
        crate::telemetry::store().group_commit(jobs.len(), total);
        let raw: Vec<redis::Value> = self.replication.run("apply", limit, &mut conn, &inv).await?;
        codec::apply_results(jobs, &raw)
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("cfg", &self.cfg).finish()
    }
}

impl RedisStore {
    /// A store on the Redis at `cfg.url`, holding the whole state (its
    /// `partitions` is taken as 1: [`open`] splits it). Connects lazily:
    /// the service can start while Redis is down and reports NOT_SERVING
    /// until it answers.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a malformed URL, key prefix or hash tag.
    pub fn new(mut cfg: RedisConfig) -> Result<Self> {
        cfg.partitions = 1;
        let record = Self::validated(&cfg)?;
        let topology = Topology::new(&cfg)?;
        let conn = topology.shared(&cfg)?;
        Self::with(cfg, topology, conn, Some(record), feed_outage())
    }

    /// One store per partition (hash tag [`keys::partition_tag`], one
    /// event shard each) on one shared connection; partition 0 records the
    /// partition count.
    ///
    /// # Errors
    /// As [`RedisStore::new`].
    pub fn partitions(cfg: RedisConfig) -> Result<Vec<Self>> {
        let record = Self::validated(&cfg)?;
        let topology = Topology::new(&cfg)?;
        let conn = topology.shared(&cfg)?;
        let outage = feed_outage();
        let mut stores = (0..cfg.partitions.max(1))
            .map(|p| {
                let mut part = cfg.clone();
                part.hash_tag = Some(keys::partition_tag(p, cfg.partitions));
                part.event_shards = 1;
                let record = (p == 0).then(|| record.clone());
                Self::with(part, topology.clone(), conn.clone(), record, outage.clone())
            })
            .collect::<Result<Vec<_>>>()?;
        let senders = stores.iter().map(RedisStore::apply_sender).collect();
        let nodes = Arc::new(nodes::NodeWriter::new(senders, conn, cfg.cluster));
        let gate = Arc::new(layout::Gate::default());
        for (p, store) in stores.iter_mut().enumerate() {
            store.node_writes = Some((nodes.clone(), p));
            store.gate = gate.clone();
        }
        Ok(stores)
    }

    /// The sender of this store's own apply calls.
    fn apply_sender(&self) -> ApplySender {
        ApplySender {
            conn: self.conn.clone(),
            cfg: self.cfg.clone(),
            replication: self.replication.clone(),
        }
    }

    /// Checks the prefix; the key recording the partition count (under the
    /// prefix without any hash tag: one per deployment).
    fn validated(cfg: &RedisConfig) -> Result<String> {
        keys::validate_prefix(&cfg.key_prefix).map_err(|e| crate::domain::InvalidInput::new("key_prefix", e))?;
        Ok(keys::partitions(&cfg.key_prefix))
    }

    fn with(
        mut cfg: RedisConfig,
        topology: Topology,
        conn: Conn,
        record: Option<String>,
        feed_outage: Arc<OutageLog>,
    ) -> Result<Self> {
        if cfg.cluster && cfg.hash_tag.is_none() {
            cfg.hash_tag = Some(config::CLUSTER_HASH_TAG.into());
        }
        if let Some(tag) = cfg.hash_tag.take() {
            keys::validate_prefix(&tag).map_err(|e| crate::domain::InvalidInput::new("hash_tag", e))?;
            cfg.key_prefix = keys::tagged(&cfg.key_prefix, &tag);
        }
        let integrations = Arc::new(RedisIntegrations::new(
            topology.clone(),
            conn.clone(),
            cfg.key_prefix.clone(),
            cfg.timeout,
        ));
        let replication = Replication::new(cfg.replica_acks);
        Ok(Self {
            topology,
            conn,
            cfg,
            partitions_record: record,
            feed_outage,
            node_writes: None,
            gate: Arc::default(),
            writes: Arc::default(),
            reads: Arc::default(),
            integrations,
            replication,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &RedisConfig {
        &self.cfg
    }

    async fn bounded<T>(
        &self,
        call: &'static str,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        within(call, self.cfg.timeout, fut).await
    }

    fn call(&self, f: Function) -> redis::Cmd {
        functions::call(&self.cfg, f)
    }

    fn ttl_ms(&self) -> u64 {
        self.cfg.default_ttl.as_millis() as u64
    }

    async fn reap_with(&self, only_token: &str) -> Result<ReapReport> {
        let mut inv = self.call(Function::Reap);
        inv.arg(REAP_BUDGET).arg(only_token);
        let mut conn = self.conn.clone();
        Ok(codec::reap_report(self.bounded("reap", invoke(&mut conn, &inv)).await?))
    }
}

/// The store for `cfg`: one Redis store, or with more than one partition
/// one per partition behind the [`PartitionedStore`](crate::store::PartitionedStore) router.
///
/// # Errors
/// As [`RedisStore::new`].
pub fn open(cfg: RedisConfig) -> Result<Arc<dyn Store>> {
    if cfg.partitions <= 1 {
        return Ok(Arc::new(RedisStore::new(cfg)?));
    }
    let parts = RedisStore::partitions(cfg)?
        .into_iter()
        .map(|p| Arc::new(p) as Arc<dyn Store>)
        .collect();
    Ok(Arc::new(crate::store::PartitionedStore::new(parts)?))
}

/// The event stream readers' outage log.
fn feed_outage() -> Arc<OutageLog> {
    Arc::new(OutageLog::new("event stream readers"))
}

#[async_trait]
impl Store for RedisStore {
    async fn write(&self, session: &SessionId, batch: Batch<'_>) -> Result<Applied> {
        self.gate.check()?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = writer::Job {
            session: session.clone(),
            sequence: batch.sequence,
            epoch: batch.epoch,
            open_epoch: batch.open_epoch,
            owner: batch.owner.to_string(),
            ops: batch.ops.to_vec(),
            include_metrics: batch.include_metrics,
            reply,
        };
        match &self.node_writes {
            Some((nodes, p)) => nodes.send(*p, job)?,
            None => self
                .writes
                .get_or_init(|| writer::start(self.apply_sender()))
                .send(job)
                .map_err(|_| Error::Internal("the write queue is closed".into()))?,
        }
        answer
            .await
            .map_err(|_| Error::Internal("the write queue dropped a write".into()))?
    }

    async fn keep_alive_opening(
        &self,
        session: &SessionId,
        owner: &str,
        ttl_ms: Option<u64>,
        open_epoch: u64,
    ) -> Result<KeepAliveOutcome> {
        self.gate.check()?;
        let mut inv = self.call(Function::KeepAlive);
        codec::keep_alive_args(&mut inv, session.as_str(), ttl_ms, self.ttl_ms(), owner, open_epoch);
        let mut conn = self.conn.clone();
        codec::keep_alive_outcome(self.bounded("keep_alive", invoke(&mut conn, &inv)).await?)
    }

    async fn close_session_as(&self, session: &SessionId, owner: &str) -> Result<Option<u64>> {
        self.gate.check()?;
        let mut inv = self.call(Function::Close);
        inv.arg(session.as_str()).arg(owner);
        let mut conn = self.conn.clone();
        let raw = self.replication.run("close", self.cfg.timeout, &mut conn, &inv).await?;
        match codec::closed(raw)? {
            Closed::NotOwner => Err(not_owner(owner, session, false)),
            Closed::Nothing => Ok(None),
            Closed::Retired { token, epoch } => {
                // Remove everything of the token before answering, in
                // bounded script calls so that a huge session does not
                // stall Redis.
                while self.reap_with(&token).await?.more {}
                Ok(epoch)
            }
        }
    }

    async fn get(&self, channels: &[ChannelName]) -> Result<Vec<Metrics>> {
        self.gate.check()?;
        if channels.is_empty() {
            return Ok(Vec::new());
        }
        let fetch = || MgetFetch {
            conn: self.conn.clone(),
            timeout: self.cfg.timeout,
        };
        let keys: Vec<String> = channels
            .iter()
            .map(|ch| keys::channel_metrics(&self.cfg.key_prefix, ch.as_str()))
            .collect();
        let raw = if keys.len() >= reads::MERGE_BELOW {
            // a large read pays for its own command: merging would only
            // make it wait for a slot
            reads::Fetch::mget(&fetch(), keys).await?
        } else {
            let queue = self.reads.get_or_init(|| reads::start(fetch(), self.cfg.partitions));
            let (reply, answer) = tokio::sync::oneshot::channel();
            queue
                .send(reads::Read { keys, reply })
                .map_err(|_| Error::Internal("read queue closed".into()))?;
            answer
                .await
                .map_err(|_| Error::Internal("read queue dropped a read".into()))??
        };
        if raw.len() != channels.len() {
            return Err(Error::Internal(format!(
                "MGET returned {} values for {} keys",
                raw.len(),
                channels.len()
            )));
        }
        Ok(raw
            .iter()
            .map(|v| codec::parse_metrics(v.as_deref().unwrap_or_default()))
            .collect())
    }

    async fn list(&self, q: &ListQuery) -> Result<ListPage> {
        self.gate.check()?;
        let mut inv = self.call(Function::List);
        codec::list_args(&mut inv, q);
        let mut conn = self.conn.clone();
        codec::list_page(q, self.bounded("list", invoke(&mut conn, &inv)).await?)
    }

    /// Three O(1) reads in one MULTI: the name index's size (active
    /// channels), the totals hash the functions keep (`keys::totals`), and
    /// the lease set's size (open sessions).
    async fn stats(&self) -> Result<Totals> {
        self.gate.check()?;
        let p = &self.cfg.key_prefix;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("ZCARD")
            .arg(keys::name_index(p))
            .cmd("HMGET")
            .arg(keys::totals(p))
            .arg("c")
            .arg("pm")
            .cmd("ZCARD")
            .arg(keys::leases(p));
        let mut conn = self.conn.clone();
        let (channels, sums, sessions): (u64, Vec<Option<i64>>, u64) =
            self.bounded("stats", pipe.query_async(&mut conn)).await?;
        // a sum can only be negative if the hash was changed by hand
        let sum = |i: usize| sums.get(i).copied().flatten().unwrap_or(0).max(0) as u64;
        Ok(Totals {
            active_channels: channels,
            connections: sum(0),
            presence_members: sum(1),
            sessions,
        })
    }

    async fn session_state(&self, session: &SessionId) -> Result<Vec<HeldAttachment>> {
        self.gate.check()?;
        let mut inv = self.call(Function::SessionState);
        inv.arg(session.as_str());
        let mut conn = self.conn.clone();
        codec::held_attachments(self.bounded("session_state", invoke(&mut conn, &inv)).await?)
    }

    async fn reap(&self) -> Result<ReapReport> {
        self.reap_with("").await
    }

    fn shards(&self) -> u32 {
        self.cfg.event_shards
    }

    async fn snapshot(&self, channels: &[ChannelName]) -> Result<Snapshot> {
        self.gate.check()?;
        let mut inv = self.call(Function::Snapshot);
        for c in channels {
            inv.arg(c.as_str());
        }
        let mut conn = self.conn.clone();
        let reply = self.bounded("snapshot", invoke(&mut conn, &inv)).await?;
        codec::snapshot(channels.len(), self.cfg.event_shards, reply)
    }

    async fn history(&self, shard: u32, after: Pos, limit: usize) -> Result<History> {
        let mut inv = self.call(Function::History);
        inv.arg(shard).arg(after.to_string()).arg(limit);
        let mut conn = self.conn.clone();
        codec::history(self.bounded("history", invoke(&mut conn, &inv)).await?)
    }

    fn integrations(&self) -> Option<Arc<dyn crate::integrations::IntegrationStore>> {
        Some(self.integrations.clone())
    }

    fn feed(&self, sink: Arc<dyn ChangeSink>, cancel: CancellationToken) {
        let outage = self.feed_outage.clone();
        for shard in 0..self.cfg.event_shards {
            tokio::spawn(reader::run(
                self.topology.clone(),
                self.cfg.clone(),
                shard,
                sink.clone(),
                cancel.clone(),
                outage.clone(),
            ));
        }
    }

    /// See `health.rs`.
    async fn ping(&self) -> Result<()> {
        self.health_check().await
    }
}
