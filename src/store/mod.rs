//! Where occupancy state lives: the [`Store`] trait and its two
//! implementations, in memory (one process) and Redis (any number of
//! replicas). Both pass the conformance suite in `tests/it/conformance.rs`.

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::domain::{
    Applied, Batch, ChangeEvent, ChannelName, HeldAttachment, KeepAliveOutcome, ListPage, ListQuery, Metrics, OpResult,
    Operation, Pos, SessionId, Totals,
};
use crate::error::Result;

pub mod memory;
pub mod outage;
pub mod partitioned;
pub mod redis;
pub use self::redis::{RedisConfig, RedisStore};

/// The feed's side of the hub's demand, where store code and its docs
/// have always found it.
pub use crate::fanout::Demand;
pub use memory::MemoryStore;
pub use partitioned::PartitionedStore;

/// Progress of one round of lease expiry work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReapReport {
    /// Sessions whose lease ran out and were retired in this round.
    pub sessions_expired: usize,
    /// Connections removed in this round.
    pub connections_removed: usize,
    /// Whether more work is waiting (call again soon).
    pub more: bool,
}

/// Receives every committed change, in log order per shard.
pub trait ChangeSink: Send + Sync + 'static {
    /// One change. Must not block: it runs on the event reader.
    fn publish(&self, event: ChangeEvent);
    /// Changes may have been missed (the event log was lost or trimmed past
    /// a reader): every subscriber should take a fresh snapshot.
    fn resync(&self);
    /// Who listens, if the sink says: a feed may stop reading while nobody
    /// does (see [`Demand`]). `None` (the default): always read.
    fn demand(&self) -> Option<&Demand> {
        None
    }
    /// The sink's number for the feed's shard `local`: the shard a feed
    /// marks paused in [`Demand`] and names in its logs. The feed of one
    /// store numbers its shards as the sink does (the default); a
    /// partition's sink maps its partition's one shard to the partition.
    fn shard_of(&self, local: u32) -> u32 {
        local
    }
}

/// Metrics of some channels together with the log positions they reflect,
/// read atomically: a later event of one of these channels has a position
/// after `positions[shard]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Per requested channel, in order.
    pub metrics: Vec<Metrics>,
    /// Per shard: the last position of its log.
    pub positions: Vec<Pos>,
}

/// Channels changed in one shard's log after a position.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct History {
    /// The changes, in log order (a channel may repeat).
    pub changes: Vec<(Pos, ChannelName)>,
    /// Entries after the position were trimmed or lost: the history is
    /// incomplete.
    pub gap: bool,
    /// Whether more entries follow the last one returned.
    pub more: bool,
}

/// What a SyncSession did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncOutcome {
    /// Whether the session's lease was alive before.
    pub was_alive: bool,
    /// Holdings added or corrected.
    pub added: u32,
    /// Holdings removed.
    pub removed: u32,
    /// The epoch of the session's lease after the sync.
    pub epoch: u64,
}

/// The refusal of a call by `owner` on `session` that belongs to another
/// owner (or names a connection of another owner's session).
pub fn not_owner(owner: &str, session: &SessionId, connection: bool) -> crate::Error {
    let what = if connection {
        format!(
            "a connection this write would move out of another key's session (writing session {:?})",
            session.as_str()
        )
    } else {
        format!("session {:?}", session.as_str())
    };
    crate::Error::Auth(crate::auth::AuthError::NotOwner {
        key: owner.to_string(),
        what,
    })
}

/// Occupancy state shared by the service's handlers.
///
/// Every method is atomic with respect to the others, whichever replica
/// calls it.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies a write of `session` (see
    /// [`OccupancyState::apply`](crate::domain::OccupancyState::apply) for
    /// the rules): checks the
    /// batch's epoch and sequence against the session's live lease, then
    /// applies its operations in order, extending the lease or opening one
    /// when the write leaves the session holding something.
    ///
    /// # Errors
    /// [`crate::Error::Unavailable`] when the store cannot be reached.
    async fn write(&self, session: &SessionId, batch: Batch<'_>) -> Result<Applied>;

    /// [`Store::write`] of an unconditional batch: the results and the
    /// lease epoch after it.
    ///
    /// # Errors
    /// As [`Store::write`].
    async fn apply(
        &self,
        session: &SessionId,
        ops: &[Operation],
        include_metrics: bool,
    ) -> Result<(Vec<OpResult>, u64)> {
        self.apply_as(session, "", ops, include_metrics).await
    }

    /// [`Store::apply`] by `owner` (see [`Batch::owner`]).
    ///
    /// # Errors
    /// As [`Store::write`]; [`crate::Error::Auth`] when the session or a
    /// connection it would move belongs to another owner (nothing changed).
    async fn apply_as(
        &self,
        session: &SessionId,
        owner: &str,
        ops: &[Operation],
        include_metrics: bool,
    ) -> Result<(Vec<OpResult>, u64)> {
        let mut batch = Batch::new(ops, include_metrics);
        batch.owner = owner;
        match self.write(session, batch).await? {
            Applied::Done { results, epoch } => Ok((results, epoch)),
            Applied::NotOwner { connection } => Err(not_owner(owner, session, connection)),
            other => Err(crate::Error::Internal(format!(
                "an unconditional write was refused: {other:?}"
            ))),
        }
    }

    /// Extends `session`'s lease (to `ttl_ms` when given).
    ///
    /// # Errors
    /// As [`Store::write`].
    async fn keep_alive(&self, session: &SessionId, ttl_ms: Option<u64>) -> Result<KeepAliveOutcome> {
        self.keep_alive_as(session, "", ttl_ms).await
    }

    /// [`Store::keep_alive`] by `owner`, in the same atomic step as the
    /// owner check: [`KeepAliveOutcome::NotOwner`] (nothing changed) when
    /// the session's live lease belongs to another owner; a lease it opens
    /// records `owner`.
    ///
    /// # Errors
    /// As [`Store::write`].
    async fn keep_alive_as(&self, session: &SessionId, owner: &str, ttl_ms: Option<u64>) -> Result<KeepAliveOutcome> {
        self.keep_alive_opening(session, owner, ttl_ms, 0).await
    }

    /// [`Store::keep_alive_as`] where a lease it opens takes the epoch
    /// `open_epoch` when that is not 0 (see [`Batch::open_epoch`]): how
    /// several stores come to hold one lease under one epoch.
    ///
    /// # Errors
    /// As [`Store::write`].
    async fn keep_alive_opening(
        &self,
        session: &SessionId,
        owner: &str,
        ttl_ms: Option<u64>,
        open_epoch: u64,
    ) -> Result<KeepAliveOutcome>;

    /// Removes everything of `session` now: the epoch of the lease closed,
    /// or `None` when it had no live lease.
    ///
    /// # Errors
    /// As [`Store::write`].
    async fn close_session(&self, session: &SessionId) -> Result<Option<u64>> {
        self.close_session_as(session, "").await
    }

    /// [`Store::close_session`] by `owner`.
    ///
    /// # Errors
    /// As [`Store::write`]; [`crate::Error::Auth`] when the session's live
    /// lease belongs to another owner (nothing changed).
    async fn close_session_as(&self, session: &SessionId, owner: &str) -> Result<Option<u64>>;

    /// The metrics of each channel, in order (zero for inactive ones).
    ///
    /// # Errors
    /// As [`Store::write`].
    async fn get(&self, channels: &[ChannelName]) -> Result<Vec<Metrics>>;

    /// One page of active channels.
    ///
    /// # Errors
    /// As [`Store::write`].
    async fn list(&self, query: &ListQuery) -> Result<ListPage>;

    /// App-wide totals, read in one atomic step. Both stores keep them as
    /// channels and sessions change, so this costs the same whatever the
    /// number of channels.
    ///
    /// # Errors
    /// As [`Store::write`].
    async fn stats(&self) -> Result<Totals>;

    /// Everything `session` holds while its lease is alive, sorted; empty
    /// for an unknown or expired session.
    ///
    /// # Errors
    /// As [`Store::write`].
    async fn session_state(&self, session: &SessionId) -> Result<Vec<HeldAttachment>>;

    /// Makes `session` hold exactly `desired` (idempotent): opens or
    /// extends its lease (to `ttl_ms` when given), then applies the
    /// difference from what it holds, re-reading until nothing differs (at
    /// most three rounds: a connection moved in from another session may
    /// bring attachments of its own, which the next round removes).
    ///
    /// # Errors
    /// As [`Store::write`].
    async fn sync_session(
        &self,
        session: &SessionId,
        desired: &[HeldAttachment],
        ttl_ms: Option<u64>,
    ) -> Result<SyncOutcome> {
        self.sync_session_as(session, "", desired, ttl_ms).await
    }

    /// [`Store::sync_session`] by `owner`.
    ///
    /// # Errors
    /// As [`Store::write`]; [`crate::Error::Auth`] when the session, or a
    /// connection it declares, belongs to another owner.
    async fn sync_session_as(
        &self,
        session: &SessionId,
        owner: &str,
        desired: &[HeldAttachment],
        ttl_ms: Option<u64>,
    ) -> Result<SyncOutcome> {
        let was = self.keep_alive_as(session, owner, ttl_ms).await?;
        if was == KeepAliveOutcome::NotOwner {
            return Err(not_owner(owner, session, false));
        }
        let mut outcome = SyncOutcome {
            was_alive: matches!(was, KeepAliveOutcome::Active { .. }),
            added: 0,
            removed: 0,
            epoch: was.epoch(),
        };
        for _ in 0..3 {
            let current = self.session_state(session).await?;
            let (ops, added, removed) = crate::domain::ops::sync_operations(&current, desired);
            if ops.is_empty() {
                break;
            }
            outcome.added += added;
            outcome.removed += removed;
            for chunk in ops.chunks(crate::domain::limits::MAX_BATCH) {
                // the lease the KeepAlive above opened or extended; a write
                // cannot drop it (only a new lease is dropped when empty)
                outcome.epoch = self.apply_as(session, owner, chunk, false).await?.1;
            }
        }
        Ok(outcome)
    }

    /// Does one round of lease expiry. Safe to call from every replica at
    /// once: each expired session is removed exactly once.
    ///
    /// # Errors
    /// As [`Store::write`].
    async fn reap(&self) -> Result<ReapReport>;

    /// Number of event log shards.
    fn shards(&self) -> u32;

    /// Current metrics of `channels` with the log positions they reflect.
    ///
    /// # Errors
    /// As [`Store::write`].
    async fn snapshot(&self, channels: &[ChannelName]) -> Result<Snapshot>;

    /// Up to `limit` changes of shard `shard` after `after`.
    ///
    /// # Errors
    /// As [`Store::write`].
    async fn history(&self, shard: u32, after: Pos, limit: usize) -> Result<History>;

    /// Starts feeding every change committed from now on, by any replica,
    /// to `sink`, until `cancel`.
    fn feed(&self, sink: Arc<dyn ChangeSink>, cancel: CancellationToken);

    /// Where this store keeps integration rules and their queues; `None`
    /// for a store without them (test doubles).
    fn integrations(&self) -> Option<Arc<dyn crate::integrations::IntegrationStore>> {
        None
    }

    /// Checks that the store answers.
    ///
    /// # Errors
    /// As [`Store::write`].
    async fn ping(&self) -> Result<()>;
}
