//! The in-memory store: [`OccupancyState`] behind a mutex, for a single
//! process with no Redis. Same semantics as the Redis store; time comes from
//! tokio's clock, so tests can pause and advance it.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{ReapReport, Store};
use crate::domain::{
    Change, ChannelName, KeepAliveOutcome, ListPage, ListQuery, Metrics, OccupancyState, OpResult, Operation, SessionId,
};
use crate::error::{Error, Result};

/// Occupancy state held in this process.
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<OccupancyState>,
    epoch: Instant,
    default_ttl_ms: u64,
}

impl MemoryStore {
    /// An empty store whose sessions open with `default_ttl`.
    pub fn new(default_ttl: Duration) -> Self {
        Self {
            state: Mutex::new(OccupancyState::new()),
            epoch: Instant::now(),
            default_ttl_ms: default_ttl.as_millis() as u64,
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn with<T>(&self, f: impl FnOnce(&mut OccupancyState, u64, &mut Vec<Change>) -> T) -> Result<T> {
        let mut changes = Vec::new();
        let now = self.now();
        let out = {
            let mut state = self
                .state
                .lock()
                .map_err(|_| Error::Internal("memory store lock poisoned".into()))?;
            f(&mut state, now, &mut changes)
        };
        Ok(out)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn apply(&self, session: &SessionId, ops: &[Operation], include_metrics: bool) -> Result<Vec<OpResult>> {
        let ttl = self.default_ttl_ms;
        self.with(|s, now, ch| s.apply(now, session, ttl, ops, include_metrics, ch))
    }

    async fn keep_alive(&self, session: &SessionId, ttl_ms: Option<u64>) -> Result<KeepAliveOutcome> {
        let ttl = self.default_ttl_ms;
        self.with(|s, now, ch| s.keep_alive(now, session, ttl_ms, ttl, ch))
    }

    async fn close_session(&self, session: &SessionId) -> Result<bool> {
        self.with(|s, now, ch| s.close_session(now, session, ch))
    }

    async fn get(&self, channels: &[ChannelName]) -> Result<Vec<Metrics>> {
        self.with(|s, _, _| channels.iter().map(|c| s.metrics(c)).collect())
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage> {
        self.with(|s, _, _| s.list(query))
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

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}
