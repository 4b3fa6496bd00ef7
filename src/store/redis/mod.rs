//! The Redis store: state shared by any number of replicas.
//!
//! Every change is one call of a Lua function (files under `lua/`, loaded
//! as one Redis function library: `functions.rs`), so a change is atomic
//! and counts are maintained incrementally: reading a channel is one key
//! whatever its size. Concurrent writes of a replica are merged into one
//! call (`writer.rs`), concurrent small reads into one MGET (`reads.rs`),
//! and a call reads and writes everything a batch touches with a few
//! variadic commands (the layout is in [`keys`]).
//! Lease deadlines use the Redis clock (`TIME`), so replicas with skewed
//! clocks agree on when a session expires.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, ServerErrorKind};

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{ChangeSink, History, ReapReport, Snapshot, Store};
use crate::domain::list::{name_of_busy_key, ListOrder};
use crate::domain::{
    Applied, Batch, ChannelName, ClientId, ConnectionId, HeldAttachment, KeepAliveOutcome, ListPage, ListQuery,
    ListedChannel, Metrics, ModeSet, OpResult, OpStatus, Operation, Pos, SessionId, Totals,
};
use crate::error::{Error, Result};
use crate::store::not_owner;

mod functions;
mod group;
pub mod keys;
mod reader;
mod reads;
mod writer;

use functions::{invoke, Function};

/// Attachments a reap round may remove in one script call (plus at most
/// one connection's worth); bounds how long one call holds Redis.
const REAP_BUDGET: usize = 2000;

/// Extra time allowed per operation of an Apply batch beyond the timeout.
const BATCH_ALLOWANCE_PER_OP: Duration = Duration::from_micros(100);

/// How to reach and lay out the Redis state.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` URL (TLS with rustls; the URL's user and
    /// password, if any, are sent with AUTH). `rediss://` checks the
    /// server's certificate against the system's roots, or against
    /// `tls_ca_file`.
    pub url: String,
    /// PEM file of the CA certificate(s) that sign the Redis server's
    /// certificate, for a private CA; `None` trusts the system's roots.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Prefix of every key, so deployments can share a Redis.
    pub key_prefix: String,
    /// Bound on connecting and on every call.
    pub timeout: Duration,
    /// Lease of a new session.
    pub default_ttl: Duration,
    /// Number of event stream shards.
    pub event_shards: u32,
    /// Changes each event stream keeps, approximately (see `lua/common.lua`).
    pub stream_max_len: u64,
}

impl RedisConfig {
    /// A configuration with the service defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            tls_ca_file: None,
            key_prefix: "occupancy".into(),
            timeout: Duration::from_secs(1),
            default_ttl: Duration::from_secs(15),
            event_shards: 8,
            stream_max_len: 10_000,
        }
    }
}

/// The PEM bytes of a CA file, checked to hold at least one certificate.
///
/// # Errors
/// A message naming the file when it cannot be read or holds no PEM
/// certificate.
pub fn read_ca_file(path: &std::path::Path) -> std::result::Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(pem)
}

/// Occupancy state in Redis.
#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    conn: ConnectionManager,
    cfg: RedisConfig,
    /// The group commit queue of writes, started on first use (inside the
    /// runtime).
    writes: Arc<std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<writer::Job>>>,
    /// The read queue (`reads.rs`), started on first use.
    reads: Arc<std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<reads::Read>>>,
}

/// Reads merged reads' keys with one MGET.
struct MgetFetch {
    conn: ConnectionManager,
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
struct ApplySender {
    conn: ConnectionManager,
    cfg: RedisConfig,
}

impl writer::Sender for ApplySender {
    async fn send(&self, jobs: &[writer::Job]) -> Result<Vec<Applied>> {
        let mut inv = functions::call(&self.cfg, Function::Apply);
        inv.arg(self.cfg.default_ttl.as_millis() as u64).arg(jobs.len());
        let shards = self.cfg.event_shards.max(1);
        let mut total = 0usize;
        for job in jobs {
            inv.arg(job.session.as_str())
                .arg(if job.include_metrics { "1" } else { "0" })
                .arg(job.sequence)
                .arg(job.epoch)
                .arg(new_token())
                .arg(job.owner.as_str())
                .arg(job.ops.len());
            total += job.ops.len();
            for op in &job.ops {
                let channel = op.channel();
                let (kind, extra) = match op {
                    Operation::Attach { modes, .. } => ("A", modes.bits().to_string()),
                    Operation::Detach { .. } => ("D", String::new()),
                    Operation::Enter { client, .. } => ("E", client.as_str().to_string()),
                    Operation::Leave { client, .. } => ("L", client.as_str().to_string()),
                };
                inv.arg(kind)
                    .arg(op.connection().as_str())
                    .arg(channel.as_str())
                    .arg(extra)
                    .arg(keys::shard_of(channel.as_str(), shards));
            }
        }
        let mut conn = self.conn.clone();
        // a batch of 10,000 operations is one script of tens to hundreds of
        // ms: allow for it on top of the timeout
        let limit = self.cfg.timeout + BATCH_ALLOWANCE_PER_OP * total as u32;
        crate::telemetry::store().group_commit(jobs.len(), total);
        let raw: Vec<redis::Value> = within("apply", limit, invoke(&mut conn, &inv)).await?;
        if raw.len() != 2 * jobs.len() {
            return Err(Error::Internal(format!(
                "apply function returned {} values for {} writes",
                raw.len(),
                jobs.len()
            )));
        }
        jobs.iter()
            .zip(raw.chunks_exact(2))
            .map(|(job, raw)| write_results(job, &raw[0], &raw[1]))
            .collect()
    }
}

/// Bytes of an operation's result in the apply function's reply: a status
/// byte, then (when asked for) the channel's counters as stored.
const OP_RESULT_LEN: usize = 1 + PACKED_METRICS_LEN;

/// A new lease token (and epoch) for a lease a call may open: a random
/// non-zero 64-bit number, so tokens never repeat, even after Redis lost
/// its data (see `live_token` in `lua/common.lua`).
fn new_token() -> u64 {
    rand::random::<u64>().max(1)
}

/// A lease epoch from a token as Redis holds it (Lua's `false`, nil in
/// RESP2 and false in RESP3: no lease).
fn epoch_of(raw: &redis::Value) -> Result<u64> {
    match raw {
        redis::Value::Nil | redis::Value::Boolean(false) => Ok(0),
        redis::Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| Error::Internal(format!("malformed lease token {b:?}"))),
        other => Err(Error::Internal(format!("a lease token was {other:?}"))),
    }
}

/// One write's outcome from the apply function's reply (`lua/apply.lua`):
/// a string of one status byte per operation, each followed by the
/// channel's packed counters when the write asked for them; or -1 when the
/// write's sequence was stale, -2 when its epoch was not the live lease's,
/// -3 when the session's lease, -4 when a connection it would move,
/// belongs to another owner
/// (nothing applied); then the session's token after the write.
fn write_results(job: &writer::Job, raw: &redis::Value, token: &redis::Value) -> Result<Applied> {
    let epoch = epoch_of(token)?;
    let bytes = match raw {
        redis::Value::Int(-1) if job.sequence > 0 => return Ok(Applied::Stale { epoch }),
        redis::Value::Int(-2) if job.epoch > 0 => return Ok(Applied::WrongEpoch { epoch }),
        redis::Value::Int(-3) => return Ok(Applied::NotOwner { connection: false }),
        redis::Value::Int(-4) => return Ok(Applied::NotOwner { connection: true }),
        redis::Value::BulkString(b) => b.as_slice(),
        other => {
            return Err(Error::Internal(format!(
                "apply function returned {other:?} for a write"
            )))
        }
    };
    let width = if job.include_metrics { OP_RESULT_LEN } else { 1 };
    if bytes.len() != job.ops.len() * width {
        return Err(Error::Internal(format!(
            "apply function returned {} bytes for {} operations",
            bytes.len(),
            job.ops.len()
        )));
    }
    let results = bytes
        .chunks_exact(width)
        .map(|r| OpResult {
            status: match r[0] {
                2 => OpStatus::NotPresenceAttached,
                3 => OpStatus::TooManyChannels,
                _ => OpStatus::Ok,
            },
            metrics: job.include_metrics.then(|| parse_metrics(&r[1..])),
        })
        .collect();
    Ok(Applied::Done { results, epoch })
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("cfg", &self.cfg).finish()
    }
}

impl From<RedisError> for Error {
    fn from(e: RedisError) -> Self {
        let unavailable = e.is_timeout()
            || e.is_io_error()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
            // a wrong ACL user or password: Redis cannot be used until the
            // configuration or Redis is fixed (the log names the cause)
            || e.kind() == ErrorKind::AuthenticationFailed
            || matches!(
                e.kind(),
                ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                        | ServerErrorKind::ClusterDown
                )
            );
        if unavailable {
            Error::Unavailable(e.to_string())
        } else {
            Error::Internal(format!("redis: {e}"))
        }
    }
}

impl RedisStore {
    /// A store on the Redis at `cfg.url`. Connects lazily: the service can
    /// start while Redis is down and reports NOT_SERVING until it answers.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a malformed URL or key prefix.
    pub fn new(cfg: RedisConfig) -> Result<Self> {
        keys::validate_prefix(&cfg.key_prefix).map_err(|e| crate::domain::InvalidInput::new("key_prefix", e))?;
        let bad_url = |e: RedisError| crate::domain::InvalidInput::new("redis_url", e.to_string());
        // TCP_NODELAY: a pipeline or a large script call spans several
        // segments, and Nagle's algorithm would hold the last one until
        // Redis' delayed ACK (~40 ms)
        let info = redis::IntoConnectionInfo::into_connection_info(cfg.url.as_str())
            .map_err(bad_url)?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = match &cfg.tls_ca_file {
            None => redis::Client::open(info).map_err(bad_url)?,
            Some(path) => {
                let root_cert = read_ca_file(path).map_err(|e| crate::domain::InvalidInput::new("redis_ca_file", e))?;
                redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root_cert),
                    },
                )
                .map_err(bad_url)?
            }
        };
        // Every call is bounded by `bounded` (scaled for large batches); the
        // connection's own response timeout is only a backstop.
        let mgr_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout))
            .set_response_timeout(Some((cfg.timeout * 10).max(Duration::from_secs(10))))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), mgr_cfg)?;
        Ok(Self {
            client,
            conn,
            cfg,
            writes: Arc::default(),
            reads: Arc::default(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &RedisConfig {
        &self.cfg
    }

    /// A clone of the multiplexed connection, for the event readers.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
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

    /// Fails when another replica sharing this Redis writes its events
    /// to a different number of shards.
    ///
    /// A write appends its events to the shards of its own configuration
    /// and a replica reads those of its own, so replicas that disagree
    /// lose each other's events, silently. The first health check records
    /// the count (`keys::event_shards`), each matching one keeps the record
    /// alive, and a replica with another count reports NOT_SERVING with
    /// this error until the record expires, [`EVENT_SHARDS_RECORD`] after
    /// the last replica of the old count stopped.
    async fn check_event_shards(&self, conn: &mut ConnectionManager) -> Result<()> {
        let key = keys::event_shards(&self.cfg.key_prefix);
        let ttl = EVENT_SHARDS_RECORD.as_millis() as u64;
        let mine = self.cfg.event_shards;
        let recorded: Option<u32> = self
            .bounded(
                "health",
                redis::cmd("SET")
                    .arg(&key)
                    .arg(mine)
                    .arg("NX")
                    .arg("GET")
                    .arg("PX")
                    .arg(ttl)
                    .query_async(conn),
            )
            .await?;
        match recorded {
            None => Ok(()),
            Some(n) if n == mine => {
                let _kept: bool = self
                    .bounded("health", redis::cmd("PEXPIRE").arg(&key).arg(ttl).query_async(conn))
                    .await?;
                Ok(())
            }
            Some(n) => Err(Error::FailedPrecondition(format!(
                "this replica writes and reads {mine} event shards, but another replica sharing this Redis uses {n}: \
                 every replica must use the same --event-shards (the record `{key}` expires {}s after the last \
                 replica using {n} stopped)",
                EVENT_SHARDS_RECORD.as_secs()
            ))),
        }
    }

    async fn reap_with(&self, only_token: &str) -> Result<ReapReport> {
        let mut inv = self.call(Function::Reap);
        inv.arg(REAP_BUDGET).arg(only_token);
        let mut conn = self.conn.clone();
        let (expired, removed, more): (usize, usize, u8) = self.bounded("reap", invoke(&mut conn, &inv)).await?;
        Ok(ReapReport {
            sessions_expired: expired,
            connections_removed: removed,
            more: more == 1,
        })
    }
}

/// How long the event shard count recorded in Redis outlives the last
/// health check that kept it (see `RedisStore::check_event_shards`).
pub const EVENT_SHARDS_RECORD: Duration = Duration::from_secs(30);

/// Bytes of a channel's counters as stored (`keys::channel_metrics`).
pub(crate) const PACKED_METRICS_LEN: usize = 36;

/// Parses a channel's counters as stored (`keys::channel_metrics`): the
/// nine counters as unsigned 32-bit little-endian integers. Absent or
/// malformed counters count as zero.
pub(crate) fn parse_metrics(bytes: &[u8]) -> Metrics {
    let mut a = [0u32; 9];
    if bytes.len() == PACKED_METRICS_LEN {
        for (slot, v) in a.iter_mut().zip(bytes.chunks_exact(4)) {
            *slot = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
        }
    }
    Metrics::from_array(a)
}

/// A Redis call bounded by `limit`; no answer in time is UNAVAILABLE.
/// Runs a Redis call of kind `call` within `limit`, recording its time
/// and failure (`telemetry::store`).
async fn within<T>(
    call: &'static str,
    limit: Duration,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T> {
    let start = std::time::Instant::now();
    let r = match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(Error::from),
        Err(_) => Err(Error::Unavailable(format!("no answer from redis within {limit:?}"))),
    };
    let failed = r.as_ref().err().map(|e| matches!(e, Error::Unavailable(_)));
    crate::telemetry::store().redis_call(call, start.elapsed(), failed);
    r
}

pub(crate) fn metrics_from(values: &[i64]) -> Metrics {
    let mut a = [0u32; 9];
    for (slot, v) in a.iter_mut().zip(values) {
        *slot = u32::try_from(*v).unwrap_or(0);
    }
    Metrics::from_array(a)
}

#[async_trait]
impl Store for RedisStore {
    async fn write(&self, session: &SessionId, batch: Batch<'_>) -> Result<Applied> {
        let writes = self.writes.get_or_init(|| {
            writer::start(ApplySender {
                conn: self.conn.clone(),
                cfg: self.cfg.clone(),
            })
        });
        let (reply, answer) = tokio::sync::oneshot::channel();
        writes
            .send(writer::Job {
                session: session.clone(),
                sequence: batch.sequence,
                epoch: batch.epoch,
                owner: batch.owner.to_string(),
                ops: batch.ops.to_vec(),
                include_metrics: batch.include_metrics,
                reply,
            })
            .map_err(|_| Error::Internal("the write queue is closed".into()))?;
        answer
            .await
            .map_err(|_| Error::Internal("the write queue dropped a write".into()))?
    }

    async fn keep_alive_as(&self, session: &SessionId, owner: &str, ttl_ms: Option<u64>) -> Result<KeepAliveOutcome> {
        let mut inv = self.call(Function::KeepAlive);
        inv.arg(session.as_str())
            .arg(ttl_ms.unwrap_or(0))
            .arg(self.ttl_ms())
            .arg(new_token())
            .arg(owner);
        let mut conn = self.conn.clone();
        let (status, ttl_ms, token): (u8, u64, redis::Value) =
            self.bounded("keep_alive", invoke(&mut conn, &inv)).await?;
        if status == 3 {
            return Ok(KeepAliveOutcome::NotOwner);
        }
        let epoch = epoch_of(&token)?;
        Ok(if status == 1 {
            KeepAliveOutcome::Active { ttl_ms, epoch }
        } else {
            KeepAliveOutcome::Unknown { ttl_ms, epoch }
        })
    }

    async fn close_session_as(&self, session: &SessionId, owner: &str) -> Result<Option<u64>> {
        let mut inv = self.call(Function::Close);
        inv.arg(session.as_str()).arg(owner);
        let mut conn = self.conn.clone();
        let (token, alive): (Option<String>, u8) = self.bounded("close", invoke(&mut conn, &inv)).await?;
        if alive == 3 {
            return Err(not_owner(owner, session, false));
        }
        let Some(token) = token else {
            return Ok(None);
        };
        // Remove everything of the token before answering, in bounded
        // script calls so that a huge session does not stall Redis.
        while self.reap_with(&token).await?.more {}
        if alive != 1 {
            return Ok(None);
        }
        let epoch = token
            .parse()
            .map_err(|_| Error::Internal(format!("malformed lease token {token:?}")))?;
        Ok(Some(epoch))
    }

    async fn get(&self, channels: &[ChannelName]) -> Result<Vec<Metrics>> {
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
            let queue = self.reads.get_or_init(|| reads::start(fetch()));
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
            .map(|v| parse_metrics(v.as_deref().unwrap_or_default()))
            .collect())
    }

    async fn list(&self, q: &ListQuery) -> Result<ListPage> {
        let mut inv = self.call(Function::List);
        let (start, inclusive) = match q.order {
            ListOrder::Name => q.name_start(),
            ListOrder::ConnectionsDesc => (q.after.clone().unwrap_or_default(), false),
        };
        let upper = keys::prefix_upper_bound(&q.prefix);
        inv.arg(match q.order {
            ListOrder::Name => "n",
            ListOrder::ConnectionsDesc => "c",
        })
        .arg(start)
        .arg(if inclusive { "1" } else { "0" })
        .arg(upper)
        .arg(&q.prefix)
        .arg(q.limit)
        .arg(if q.with_metrics { "1" } else { "0" });
        let mut conn = self.conn.clone();
        let (keys, metrics, more): (Vec<String>, Vec<Vec<i64>>, u8) =
            self.bounded("list", invoke(&mut conn, &inv)).await?;
        let next_cursor = (more == 1)
            .then(|| keys.last().map(|k| crate::domain::list::encode_cursor(q.order, k)))
            .flatten();
        let mut channels = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            let name = match q.order {
                ListOrder::Name => key.as_str(),
                ListOrder::ConnectionsDesc => name_of_busy_key(key),
            };
            let name = ChannelName::parse("channel", name)
                .map_err(|e| Error::Internal(format!("corrupt channel index entry: {e}")))?;
            channels.push(ListedChannel {
                name,
                metrics: q
                    .with_metrics
                    .then(|| metrics_from(metrics.get(i).map_or(&[][..], |m| m))),
            });
        }
        Ok(ListPage { channels, next_cursor })
    }

    /// Three O(1) reads in one MULTI: the name index's size (active
    /// channels), the totals hash the functions keep (`keys::totals`), and
    /// the lease set's size (open sessions).
    async fn stats(&self) -> Result<Totals> {
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
        let mut inv = self.call(Function::SessionState);
        inv.arg(session.as_str());
        let mut conn = self.conn.clone();
        let flat: Vec<String> = self.bounded("session_state", invoke(&mut conn, &inv)).await?;
        let bad = || Error::Internal("session state script returned a malformed list".into());
        let mut out = Vec::new();
        let mut it = flat.into_iter();
        while let Some(connection) = it.next() {
            let channel = it.next().ok_or_else(bad)?;
            let modes: u8 = it.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
            let n: usize = it.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
            let mut members = Vec::with_capacity(n);
            for _ in 0..n {
                members.push(ClientId::parse("client_id", it.next().ok_or_else(bad)?).map_err(|_| bad())?);
            }
            members.sort();
            out.push(HeldAttachment {
                connection: ConnectionId::parse("connection_id", connection).map_err(|_| bad())?,
                channel: ChannelName::parse("channel", channel).map_err(|_| bad())?,
                modes: ModeSet::from_bits(modes),
                members,
            });
        }
        out.sort();
        Ok(out)
    }

    async fn reap(&self) -> Result<ReapReport> {
        self.reap_with("").await
    }

    fn shards(&self) -> u32 {
        self.cfg.event_shards
    }

    async fn snapshot(&self, channels: &[ChannelName]) -> Result<Snapshot> {
        let mut inv = self.call(Function::Snapshot);
        for c in channels {
            inv.arg(c.as_str());
        }
        let mut conn = self.conn.clone();
        let mut raw: Vec<redis::Value> = self.bounded("snapshot", invoke(&mut conn, &inv)).await?;
        let bad = |what: &str| Error::Internal(format!("snapshot script returned {what}"));
        let positions: Vec<String> =
            redis::from_redis_value(raw.pop().ok_or_else(|| bad("nothing"))?).map_err(|e| bad(&e.to_string()))?;
        if raw.len() != channels.len() || positions.len() != self.cfg.event_shards as usize {
            return Err(bad("the wrong number of entries"));
        }
        let metrics = raw
            .into_iter()
            .map(|v| redis::from_redis_value::<Vec<i64>>(v).map(|m| metrics_from(&m)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad(&e.to_string()))?;
        let positions = positions
            .iter()
            .map(|p| Pos::parse(p).ok_or_else(|| bad("a malformed stream id")))
            .collect::<Result<Vec<_>>>()?;
        Ok(Snapshot { metrics, positions })
    }

    async fn history(&self, shard: u32, after: Pos, limit: usize) -> Result<History> {
        let mut inv = self.call(Function::History);
        inv.arg(shard).arg(after.to_string()).arg(limit);
        let mut conn = self.conn.clone();
        let (gap, flat, more): (u8, Vec<String>, u8) = self.bounded("history", invoke(&mut conn, &inv)).await?;
        let mut changes = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks(2) {
            let (Some(pos), Some(ch)) = (Pos::parse(&pair[0]), pair.get(1)) else {
                return Err(Error::Internal("history script returned a malformed entry".into()));
            };
            if let Ok(ch) = ChannelName::parse("channel", ch.as_str()) {
                changes.push((pos, ch));
            }
        }
        Ok(History {
            changes,
            gap: gap == 1,
            more: more == 1,
        })
    }

    fn feed(&self, sink: Arc<dyn ChangeSink>, cancel: CancellationToken) {
        let outage = Arc::new(crate::store::outage::OutageLog::new("event stream readers"));
        for shard in 0..self.cfg.event_shards {
            tokio::spawn(reader::run(
                self.client.clone(),
                self.cfg.clone(),
                shard,
                sink.clone(),
                cancel.clone(),
                outage.clone(),
            ));
        }
    }

    /// Also makes sure Redis holds this version's function library, so a
    /// replica has it before it reports SERVING, and gets it back within a
    /// health interval when Redis lost it; and that every replica sharing
    /// this Redis uses the same number of event shards
    /// (`RedisStore::check_event_shards`).
    async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let pong: String = self
            .bounded("health", redis::cmd("PING").query_async(&mut conn))
            .await?;
        if pong != "PONG" {
            return Err(Error::Internal(format!("unexpected PING reply {pong}")));
        }
        self.bounded("health", functions::ensure_loaded(&mut conn)).await?;
        self.check_event_shards(&mut conn).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_counters_parse_and_anything_else_is_zero() {
        let want = [1, 2, 3, 4, 5, 6, 7, 8, 4_000_000_000u32];
        let packed: Vec<u8> = want.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(parse_metrics(&packed), Metrics::from_array(want));
        assert_eq!(parse_metrics(b""), Metrics::from_array([0; 9]));
        assert_eq!(parse_metrics(&packed[..35]), Metrics::from_array([0; 9]));
        assert_eq!(parse_metrics(b"1,0,1,0,0,0,0,0,0"), Metrics::from_array([0; 9]));
    }

    #[test]
    fn apply_results_are_read_from_one_string_per_write() {
        use redis::Value;
        let tok = Value::BulkString(b"18446744073709551615".to_vec());
        let done = |a: Applied| match a {
            Applied::Done { results, epoch } => (results, epoch),
            other => panic!("{other:?}"),
        };
        let (mut job, _rx) = writer::tests::job(2);
        // statuses only
        let (r, epoch) = done(write_results(&job, &Value::BulkString(vec![1, 3]), &tok).unwrap());
        assert_eq!(epoch, u64::MAX);
        assert_eq!(
            r.iter().map(|x| x.status).collect::<Vec<_>>(),
            [OpStatus::Ok, OpStatus::TooManyChannels]
        );
        assert!(r.iter().all(|x| x.metrics.is_none()));
        // no lease after the write
        let (_, epoch) = done(write_results(&job, &Value::BulkString(vec![1, 1]), &Value::Nil).unwrap());
        assert_eq!(epoch, 0);
        let (_, epoch) = done(write_results(&job, &Value::BulkString(vec![1, 1]), &Value::Boolean(false)).unwrap());
        assert_eq!(epoch, 0);
        // statuses each followed by the nine counters as stored
        job.include_metrics = true;
        let mut packed = vec![2u8];
        packed.extend([1u32, 0, 0, 0, 0, 0, 0, 0, 7].iter().flat_map(|v| v.to_le_bytes()));
        packed.push(1);
        packed.extend([2u32, 0, 0, 0, 0, 0, 0, 0, 0].iter().flat_map(|v| v.to_le_bytes()));
        let (r, _) = done(write_results(&job, &Value::BulkString(packed.clone()), &tok).unwrap());
        assert_eq!(r[0].status, OpStatus::NotPresenceAttached);
        assert_eq!(r[0].metrics, Some(Metrics::from_array([1, 0, 0, 0, 0, 0, 0, 0, 7])));
        assert_eq!(r[1].status, OpStatus::Ok);
        assert_eq!(r[1].metrics, Some(Metrics::from_array([2, 0, 0, 0, 0, 0, 0, 0, 0])));
        // a length that does not fit is an error, not a guess
        assert!(write_results(&job, &Value::BulkString(packed[..40].to_vec()), &tok).is_err());
        assert!(write_results(&job, &Value::BulkString(vec![1, 1]), &tok).is_err());
        // -1 only means stale for a sequenced write, -2 only a wrong epoch
        // for a write that named one
        assert!(write_results(&job, &Value::Int(-1), &tok).is_err());
        assert!(write_results(&job, &Value::Int(-2), &tok).is_err());
        job.sequence = 9;
        job.epoch = 3;
        assert_eq!(
            write_results(&job, &Value::Int(-1), &tok).unwrap(),
            Applied::Stale { epoch: u64::MAX }
        );
        assert_eq!(
            write_results(&job, &Value::Int(-2), &Value::Nil).unwrap(),
            Applied::WrongEpoch { epoch: 0 }
        );
        assert!(write_results(&job, &Value::Nil, &tok).is_err());
        assert!(write_results(&job, &Value::BulkString(vec![1, 1]), &Value::BulkString(b"x".to_vec())).is_err());
    }
}
