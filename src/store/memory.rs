//! The in-memory store: [`OccupancyState`] behind a mutex, for a single
//! process with no Redis. Same semantics as the Redis store, including the
//! sharded event log (bounded per shard) that subscriptions resume from.
//! Time comes from tokio's clock, so tests can pause and advance it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{ChangeSink, History, ReapReport, Snapshot, Store};
use crate::domain::events::{shard_of, wall_ms};
use crate::domain::{
    Applied, Batch, Change, ChangeEvent, ChannelName, HeldAttachment, KeepAliveOutcome, ListPage, ListQuery, Metrics,
    OccupancyState, Pos, SessionId, Totals,
};
use crate::error::{Error, Result};

use crate::config::defaults;

#[derive(Debug, Default)]
struct ShardLog {
    entries: VecDeque<(Pos, ChannelName)>,
    last: Pos,
    max_deleted: Pos,
}

struct Inner {
    state: OccupancyState,
    logs: Vec<ShardLog>,
    sinks: Vec<Arc<dyn ChangeSink>>,
}

/// Occupancy state held in this process.
pub struct MemoryStore {
    inner: Mutex<Inner>,
    epoch: Instant,
    default_ttl_ms: u64,
    log_len: usize,
    integrations: Arc<crate::integrations::MemoryIntegrations>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("default_ttl_ms", &self.default_ttl_ms)
            .finish()
    }
}

impl MemoryStore {
    /// An empty store whose sessions open with `default_ttl`, with the
    /// default event log ([`defaults::EVENT_SHARDS`] shards of
    /// [`defaults::STREAM_MAX_LEN`] entries).
    pub fn new(default_ttl: Duration) -> Self {
        Self::with_log(default_ttl, defaults::EVENT_SHARDS, defaults::STREAM_MAX_LEN as usize)
    }

    /// An empty store with `shards` event logs of about `log_len` entries.
    pub fn with_log(default_ttl: Duration, shards: u32, log_len: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                // a random seed: a restarted process must not repeat the
                // lease epochs front ends remember
                state: OccupancyState::with_seed(rand::random()),
                logs: (0..shards.max(1)).map(|_| ShardLog::default()).collect(),
                sinks: Vec::new(),
            }),
            epoch: Instant::now(),
            default_ttl_ms: default_ttl.as_millis() as u64,
            log_len: log_len.max(1),
            integrations: Arc::default(),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| Error::Internal("memory store lock poisoned".into()))
    }

    /// Runs a state transition, then logs and publishes its changes while
    /// still holding the lock, so every sink sees them in commit order.
    fn with<T>(&self, f: impl FnOnce(&mut OccupancyState, u64, &mut Vec<Change>) -> T) -> Result<T> {
        let mut changes = Vec::new();
        let now = self.now();
        let mut inner = self.lock()?;
        let out = f(&mut inner.state, now, &mut changes);
        if !changes.is_empty() {
            let ts = wall_ms();
            let shards = inner.logs.len() as u32;
            for c in changes {
                let shard = shard_of(c.channel.as_str(), shards);
                let log = &mut inner.logs[shard as usize];
                log.last = Pos {
                    ms: 0,
                    seq: log.last.seq + 1,
                };
                let pos = log.last;
                log.entries.push_back((pos, c.channel.clone()));
                while log.entries.len() > self.log_len {
                    if let Some((p, _)) = log.entries.pop_front() {
                        log.max_deleted = p;
                    }
                }
                let event = ChangeEvent {
                    shard,
                    pos,
                    covers: pos,
                    channel: c.channel,
                    metrics: c.metrics,
                    timestamp_ms: ts,
                };
                for sink in &inner.sinks {
                    sink.publish(event.clone());
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn write(&self, session: &SessionId, batch: Batch<'_>) -> Result<Applied> {
        let ttl = self.default_ttl_ms;
        self.with(|s, now, ch| s.apply(now, session, ttl, batch, ch))
    }

    async fn keep_alive_opening(
        &self,
        session: &SessionId,
        owner: &str,
        ttl_ms: Option<u64>,
        open_epoch: u64,
    ) -> Result<KeepAliveOutcome> {
        let ttl = self.default_ttl_ms;
        self.with(|s, now, ch| s.keep_alive_as(now, session, owner, ttl_ms, ttl, open_epoch, ch))
    }

    async fn close_session_as(&self, session: &SessionId, owner: &str) -> Result<Option<u64>> {
        self.with(|s, now, ch| s.close_session_as(now, session, owner, ch))?
            .map_err(|()| crate::store::not_owner(owner, session, false))
    }

    async fn get(&self, channels: &[ChannelName]) -> Result<Vec<Metrics>> {
        let inner = self.lock()?;
        Ok(channels.iter().map(|c| inner.state.metrics(c)).collect())
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage> {
        Ok(self.lock()?.state.list(query))
    }

    async fn stats(&self) -> Result<Totals> {
        Ok(self.lock()?.state.totals())
    }

    async fn session_state(&self, session: &SessionId) -> Result<Vec<HeldAttachment>> {
        let now = self.now();
        Ok(self.lock()?.state.session_state(now, session))
    }

    async fn reap(&self) -> Result<ReapReport> {
        self.with(|s, now, ch| {
            let n = s.expire(now, ch);
            ReapReport {
                sessions_expired: n,
                connections_removed: 0,
                more: false,
            }
        })
    }

    fn integrations(&self) -> Option<Arc<dyn crate::integrations::IntegrationStore>> {
        Some(self.integrations.clone())
    }

    fn shards(&self) -> u32 {
        self.inner
            .lock()
            .map_or(defaults::EVENT_SHARDS, |i| i.logs.len() as u32)
    }

    async fn snapshot(&self, channels: &[ChannelName]) -> Result<Snapshot> {
        let inner = self.lock()?;
        Ok(Snapshot {
            metrics: channels.iter().map(|c| inner.state.metrics(c)).collect(),
            positions: inner.logs.iter().map(|l| l.last).collect(),
        })
    }

    async fn history(&self, shard: u32, after: Pos, limit: usize) -> Result<History> {
        let inner = self.lock()?;
        let log = inner
            .logs
            .get(shard as usize)
            .ok_or_else(|| Error::Internal(format!("no event shard {shard}")))?;
        let gap = log.max_deleted > after;
        let mut changes: Vec<(Pos, ChannelName)> = log
            .entries
            .iter()
            .filter(|(p, _)| *p > after)
            .take(limit + 1)
            .cloned()
            .collect();
        let more = changes.len() > limit;
        changes.truncate(limit);
        Ok(History { changes, gap, more })
    }

    fn feed(&self, sink: Arc<dyn ChangeSink>, _cancel: CancellationToken) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.sinks.push(sink);
        }
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}
