//! The state split into partitions, each a store of its own: the router
//! that makes them answer as one store.
//!
//! A channel lives in the partition [`partition_of`] its name, with every
//! key of that partition under one Redis Cluster hash tag (`p:N.K`), so each
//! function call touches one slot and the cluster can move a partition
//! whole. What no single call can see, the router puts together:
//!
//! - **Writes.** A batch becomes one atomic call per partition it touches,
//!   sent concurrently, each carrying the batch's epoch and sequence; the
//!   answers merge as [`merge_writes`] says. The sequence is checked per
//!   partition, so a retry after a partial failure applies exactly what is
//!   missing, and the operations of partitions that had applied them
//!   already are answered `ALREADY_APPLIED`.
//! - **Leases.** Every partition keeps its own copy of a session's lease,
//!   under one epoch, so each call checks epoch, sequence and owner
//!   atomically where it runs, and each partition's reaper ends what the
//!   session held there exactly once. A KeepAlive goes to every partition
//!   offering one fresh epoch for a lease it opens; a write that opens the
//!   lease in the partitions it touches opens it in the others under the
//!   same epoch. When partitions disagree (one lost its data in a
//!   failover, or let its copy run out), the router closes the session
//!   everywhere and answers the KeepAlive with a fresh lease as unknown:
//!   the front end re-syncs, and counts are exact again within one
//!   KeepAlive round.
//! - **Reads.** Get asks each partition for its channels; a list page is
//!   one page per partition merged by [`merge_pages`] (the same page one
//!   store gives, at the cost of one page per partition); totals are sums.
//! - **Events.** Each partition has one event log: event shard `p` is
//!   partition `p` (the same hash), so subscriptions and their resume
//!   tokens work unchanged.
//!
//! What differs from one store, and why:
//!
//! | rule | one store | partitions |
//! |---|---|---|
//! | lease extended by a write | everywhere | in the partitions the write touches; KeepAlive extends it everywhere (a front end that relies on writes alone to keep a session alive must send KeepAlives) |
//! | a connection moved to another session by an attach | all of its attachments move | those in the partitions the write touches; the others stay with the old session until it ends or they are detached |
//! | `MAX_CHANNELS_PER_CONNECTION` | per connection | per connection and partition: each partition counts the attachments it holds |
//! | a write refused as another owner's | nothing changed | nothing of the other owner's changed; the batch's operations in other partitions may have applied |
//! | a sequenced write in a partition without the session's lease while another holds it | cannot happen | refused as [`Applied::WrongEpoch`] (see [`merge_writes`]): the front end re-syncs |
//! | totals | one atomic read | a sum of one atomic read per partition; `sessions` is the count of the partition holding the most leases |

use std::sync::Arc;

use async_trait::async_trait;
use futures::future::join_all;
use tokio_util::sync::CancellationToken;

use super::{ChangeSink, History, ReapReport, Snapshot, Store};
use crate::domain::partition::{
    fresh_epoch, merge_keep_alives, merge_pages, merge_writes, partition_of, split_by_partition, MergedKeepAlive,
};
use crate::domain::{
    Applied, Batch, ChangeEvent, ChannelName, HeldAttachment, KeepAliveOutcome, ListOrder, ListPage, ListQuery,
    Metrics, Operation, Pos, SessionId, Totals,
};
use crate::error::{Error, Result};

/// Rounds of closing and reopening a session's lease before a KeepAlive
/// gives up (only concurrent calls of the same session make a round fail).
const REPAIR_ROUNDS: usize = 3;

/// Several stores, one per partition, answering as one store.
pub struct PartitionedStore {
    parts: Vec<Arc<dyn Store>>,
}

impl std::fmt::Debug for PartitionedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionedStore")
            .field("partitions", &self.parts.len())
            .finish()
    }
}

impl PartitionedStore {
    /// A router over `parts`, partition `p` being `parts[p]`.
    ///
    /// # Errors
    /// [`Error::Internal`] when there is no partition, or one has more
    /// than one event shard (event shard `p` is partition `p`).
    pub fn new(parts: Vec<Arc<dyn Store>>) -> Result<Self> {
        if parts.is_empty() {
            return Err(Error::Internal("a partitioned store needs a partition".into()));
        }
        if let Some(p) = parts.iter().position(|s| s.shards() != 1) {
            return Err(Error::Internal(format!(
                "partition {p} has {} event shards; a partition has one",
                parts[p].shards()
            )));
        }
        Ok(Self { parts })
    }

    fn n(&self) -> u32 {
        self.parts.len() as u32
    }

    fn part(&self, p: u32) -> &dyn Store {
        self.parts[p as usize].as_ref()
    }

    /// `call` on every partition at once; the first error, once all ended.
    async fn everywhere<'a, T, F, Fut>(&'a self, call: F) -> Result<Vec<T>>
    where
        F: Fn(&'a dyn Store) -> Fut,
        Fut: std::future::Future<Output = Result<T>> + 'a,
    {
        join_all(self.parts.iter().map(|s| call(s.as_ref())))
            .await
            .into_iter()
            .collect()
    }

    /// Closes the session everywhere and opens a fresh lease in every
    /// partition, until all of them answer with it.
    async fn reopen(&self, session: &SessionId, owner: &str, ttl_ms: Option<u64>) -> Result<KeepAliveOutcome> {
        for _ in 0..REPAIR_ROUNDS {
            self.everywhere(|s| s.close_session_as(session, owner)).await?;
            let fresh = fresh_epoch();
            let replies = self
                .everywhere(|s| s.keep_alive_opening(session, owner, ttl_ms, fresh))
                .await?;
            match merge_keep_alives(&replies, fresh) {
                MergedKeepAlive::Agreed(out @ KeepAliveOutcome::Unknown { .. }) => return Ok(out),
                MergedKeepAlive::NotOwner(opened) => return self.refuse(session, owner, &opened).await,
                _ => {}
            }
        }
        Err(Error::Unavailable(format!(
            "the lease of session {:?} kept changing in some partitions while it was being reopened",
            session.as_str()
        )))
    }

    /// Closes the leases a refused KeepAlive opened (in `opened`), then
    /// refuses it.
    async fn refuse(&self, session: &SessionId, owner: &str, opened: &[u32]) -> Result<KeepAliveOutcome> {
        join_all(opened.iter().map(|p| self.part(*p).close_session_as(session, owner)))
            .await
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        Ok(KeepAliveOutcome::NotOwner)
    }
}

/// Passes a partition's changes on as its event shard's.
struct PartitionSink {
    partition: u32,
    sink: Arc<dyn ChangeSink>,
}

impl ChangeSink for PartitionSink {
    fn publish(&self, mut event: ChangeEvent) {
        event.shard = self.partition;
        self.sink.publish(event);
    }

    fn resync(&self) {
        self.sink.resync();
    }

    fn demand(&self) -> Option<&super::Demand> {
        self.sink.demand()
    }

    /// Every partition's reader reads its shard 0: as event shard `p` it
    /// pauses and resumes shard `p`'s mark, or one mark would stand for all
    /// partitions and only the reader holding it would pause.
    fn shard_of(&self, _local: u32) -> u32 {
        self.partition
    }
}

#[async_trait]
impl Store for PartitionedStore {
    async fn write(&self, session: &SessionId, batch: Batch<'_>) -> Result<Applied> {
        let n = self.n();
        let split = if batch.ops.is_empty() {
            // no channel to route by: the epoch and sequence checks (and
            // the sequence it records) go everywhere
            (0..n).map(|p| (p, Vec::new())).collect()
        } else {
            split_by_partition(batch.ops, |op| op.channel().as_str(), n)
        };
        // a write under a named epoch cannot open a lease
        let opened = if batch.epoch == 0 && batch.open_epoch == 0 {
            fresh_epoch()
        } else {
            batch.open_epoch
        };
        let subs: Vec<Vec<Operation>> = split
            .iter()
            .map(|(_, idx)| idx.iter().map(|&i| batch.ops[i].clone()).collect())
            .collect();
        let replies: Vec<Applied> = join_all(split.iter().zip(&subs).map(|((p, _), ops)| {
            self.part(*p).write(
                session,
                Batch {
                    ops,
                    open_epoch: opened,
                    ..batch
                },
            )
        }))
        .await
        .into_iter()
        .collect::<Result<_>>()?;
        let mut merged = merge_writes(batch.ops.len(), n, &split, replies, opened, batch.sequence > 0);
        if !merged.spread.is_empty() {
            let split = &split;
            join_all(merged.spread.iter().map(|p| async move {
                self.part(*p)
                    .keep_alive_opening(session, batch.owner, None, opened)
                    .await?;
                if batch.sequence > 0 && split.iter().any(|(q, _)| q == p) {
                    // the write ran here but left nothing, so the lease it
                    // opened was dropped with the sequence: record it in the
                    // lease just opened, so a retry is stale here too
                    let record = Batch {
                        ops: &[],
                        epoch: opened,
                        ..batch
                    };
                    self.part(*p).write(session, record).await?;
                }
                Ok::<_, Error>(())
            }))
            .await
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        }
        if let Applied::Done { results, .. } = &mut merged.applied {
            if batch.include_metrics && !merged.reread.is_empty() {
                let channels: Vec<ChannelName> =
                    merged.reread.iter().map(|&i| batch.ops[i].channel().clone()).collect();
                for (i, m) in merged.reread.iter().zip(self.get(&channels).await?) {
                    results[*i].metrics = Some(m);
                }
            }
        }
        Ok(merged.applied)
    }

    async fn keep_alive_opening(
        &self,
        session: &SessionId,
        owner: &str,
        ttl_ms: Option<u64>,
        open_epoch: u64,
    ) -> Result<KeepAliveOutcome> {
        let opened = if open_epoch == 0 { fresh_epoch() } else { open_epoch };
        let replies = self
            .everywhere(|s| s.keep_alive_opening(session, owner, ttl_ms, opened))
            .await?;
        match merge_keep_alives(&replies, opened) {
            MergedKeepAlive::Agreed(out) => Ok(out),
            MergedKeepAlive::NotOwner(fresh) => self.refuse(session, owner, &fresh).await,
            MergedKeepAlive::Disagree => self.reopen(session, owner, ttl_ms).await,
        }
    }

    async fn close_session_as(&self, session: &SessionId, owner: &str) -> Result<Option<u64>> {
        let closed = self.everywhere(|s| s.close_session_as(session, owner)).await?;
        Ok(closed.into_iter().flatten().next())
    }

    async fn get(&self, channels: &[ChannelName]) -> Result<Vec<Metrics>> {
        let split = split_by_partition(channels, ChannelName::as_str, self.n());
        let parts: Vec<Vec<ChannelName>> = split
            .iter()
            .map(|(_, idx)| idx.iter().map(|&i| channels[i].clone()).collect())
            .collect();
        let answers = join_all(split.iter().zip(&parts).map(|((p, _), chs)| self.part(*p).get(chs))).await;
        let mut out = vec![Metrics::default(); channels.len()];
        for ((_, idx), answer) in split.iter().zip(answers) {
            for (i, m) in idx.iter().zip(answer?) {
                out[*i] = m;
            }
        }
        Ok(out)
    }

    async fn list(&self, q: &ListQuery) -> Result<ListPage> {
        // busiest first, pages merge by connection count
        let mut each = q.clone();
        each.with_metrics |= q.order == ListOrder::ConnectionsDesc;
        let pages = self.everywhere(|s| s.list(&each)).await?;
        let mut page = merge_pages(q, pages);
        if !q.with_metrics {
            for c in &mut page.channels {
                c.metrics = None;
            }
        }
        Ok(page)
    }

    async fn stats(&self) -> Result<Totals> {
        let all = self.everywhere(|s| s.stats()).await?;
        Ok(all.into_iter().fold(Totals::default(), |t, p| Totals {
            active_channels: t.active_channels + p.active_channels,
            connections: t.connections + p.connections,
            presence_members: t.presence_members + p.presence_members,
            // every partition holds a copy of each session's lease
            sessions: t.sessions.max(p.sessions),
        }))
    }

    async fn session_state(&self, session: &SessionId) -> Result<Vec<HeldAttachment>> {
        let mut held: Vec<HeldAttachment> = self
            .everywhere(|s| s.session_state(session))
            .await?
            .into_iter()
            .flatten()
            .collect();
        held.sort();
        Ok(held)
    }

    async fn reap(&self) -> Result<ReapReport> {
        let all = self.everywhere(|s| s.reap()).await?;
        // Every partition holds a copy of each lease (a write spreads it),
        // and the copies' deadlines differ by the moments they were opened,
        // so one session's copies may expire in different rounds: each
        // session is counted once, when partition 0's copy expires (a
        // session whose copy there was lost in a failover is not counted).
        let sessions_expired = all.first().map_or(0, |r| r.sessions_expired);
        Ok(all.into_iter().fold(
            ReapReport {
                sessions_expired,
                ..ReapReport::default()
            },
            |t, r| ReapReport {
                sessions_expired: t.sessions_expired,
                connections_removed: t.connections_removed + r.connections_removed,
                more: t.more || r.more,
            },
        ))
    }

    fn shards(&self) -> u32 {
        self.n()
    }

    async fn snapshot(&self, channels: &[ChannelName]) -> Result<Snapshot> {
        let n = self.n();
        let mut by: Vec<Vec<usize>> = vec![Vec::new(); n as usize];
        for (i, c) in channels.iter().enumerate() {
            by[partition_of(c.as_str(), n) as usize].push(i);
        }
        // every partition, for its log position even when asked for none
        // of its channels
        let parts: Vec<Vec<ChannelName>> = by
            .iter()
            .map(|idx| idx.iter().map(|&i| channels[i].clone()).collect())
            .collect();
        let snaps = join_all(self.parts.iter().zip(&parts).map(|(s, chs)| s.snapshot(chs))).await;
        let mut out = Snapshot {
            metrics: vec![Metrics::default(); channels.len()],
            positions: Vec::with_capacity(n as usize),
        };
        for (idx, snap) in by.iter().zip(snaps) {
            let snap = snap?;
            for (i, m) in idx.iter().zip(snap.metrics) {
                out.metrics[*i] = m;
            }
            out.positions.push(snap.positions.first().copied().unwrap_or_default());
        }
        Ok(out)
    }

    async fn history(&self, shard: u32, after: Pos, limit: usize) -> Result<History> {
        match self.parts.get(shard as usize) {
            Some(s) => s.history(0, after, limit).await,
            None => Err(Error::Internal(format!("no event shard {shard}"))),
        }
    }

    fn feed(&self, sink: Arc<dyn ChangeSink>, cancel: CancellationToken) {
        for (p, s) in self.parts.iter().enumerate() {
            s.feed(
                Arc::new(PartitionSink {
                    partition: p as u32,
                    sink: sink.clone(),
                }),
                cancel.clone(),
            );
        }
    }

    /// Partition 0's: the integration rules and queues are not partitioned
    /// (they are few, and the source that fills the queues reads every
    /// partition's events).
    fn integrations(&self) -> Option<Arc<dyn crate::integrations::IntegrationStore>> {
        self.parts[0].integrations()
    }

    async fn ping(&self) -> Result<()> {
        self.everywhere(|s| s.ping()).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::{ConnectionId, ModeSet};
    use crate::store::MemoryStore;

    fn router() -> (PartitionedStore, Vec<Arc<dyn Store>>) {
        let parts: Vec<Arc<dyn Store>> = (0..3)
            .map(|_| Arc::new(MemoryStore::with_log(Duration::from_secs(60), 1, 100)) as Arc<dyn Store>)
            .collect();
        (PartitionedStore::new(parts.clone()).expect("router"), parts)
    }

    fn attach(conn: &str, channel: &str) -> Operation {
        Operation::Attach {
            connection: ConnectionId::parse("c", conn).expect("id"),
            channel: ChannelName::parse("ch", channel).expect("name"),
            modes: ModeSet::EMPTY,
        }
    }

    /// One channel name per partition.
    fn one_per_partition() -> Vec<String> {
        (0..3)
            .map(|p| {
                (0..1000)
                    .map(|i| format!("room:{i}"))
                    .find(|n| partition_of(n, 3) == p)
                    .expect("a name")
            })
            .collect()
    }

    /// A batch whose first attempt went through in one partition while
    /// opening the lease elsewhere failed: its retry finds another
    /// partition without the lease, which cannot record the sequence, so
    /// the retry and any repeat are refused for a re-sync instead of
    /// running that partition's operations again.
    #[tokio::test]
    async fn a_retry_into_a_partition_the_lease_never_reached_asks_for_a_resync() {
        let (store, parts) = router();
        let session = SessionId::parse("s", "fe").expect("id");
        let names = one_per_partition();
        let ops = [
            attach("c1", &names[0]),
            Operation::Enter {
                connection: ConnectionId::parse("c", "c2").expect("id"),
                channel: ChannelName::parse("ch", names[1].clone()).expect("name"),
                client: crate::domain::ClientId::parse("cl", "alice").expect("id"),
            },
        ];
        let batch = Batch {
            sequence: 3,
            ..Batch::new(&ops, false)
        };
        // the first attempt: partition 0's part applied, under lease 42,
        // and nothing reached the others
        let first = Batch {
            ops: &ops[..1],
            open_epoch: 42,
            ..batch
        };
        parts[0].write(&session, first).await.expect("partition 0");
        for _ in 0..2 {
            assert_eq!(
                store.write(&session, batch).await.expect("retry"),
                Applied::WrongEpoch { epoch: 42 }
            );
        }
        let out = store.keep_alive(&session, None).await.expect("keep alive");
        assert!(
            matches!(out, KeepAliveOutcome::Unknown { .. }),
            "the next KeepAlive re-syncs too: {out:?}"
        );
    }

    /// A write that opens the session's lease in one partition opens it in
    /// every partition under the same epoch, with the batch's sequence where
    /// the write ran: a KeepAlive then finds it alive, and a retry is stale.
    #[tokio::test]
    async fn a_lease_a_write_opens_is_held_by_every_partition() {
        let (store, parts) = router();
        let session = SessionId::parse("s", "fe").expect("id");
        let names = one_per_partition();
        let ops = [
            attach("c1", &names[0]),
            Operation::Detach {
                connection: ConnectionId::parse("c", "c1").expect("id"),
                channel: ChannelName::parse("ch", names[1].clone()).expect("name"),
            },
        ];
        let batch = Batch {
            sequence: 7,
            ..Batch::new(&ops, false)
        };
        let Applied::Done { epoch, .. } = store.write(&session, batch).await.expect("write") else {
            panic!("applied");
        };
        assert_ne!(epoch, 0);
        for p in &parts {
            let out = p.keep_alive(&session, None).await.expect("keep alive");
            assert_eq!(out.epoch(), epoch, "every partition holds the lease");
        }
        assert!(matches!(
            store.write(&session, batch).await.expect("retry"),
            Applied::Stale { .. }
        ));
    }

    /// A partition that lost the session's lease (as a promoted replica
    /// that missed the last writes does) makes the next KeepAlive close the
    /// session everywhere and answer unknown with a fresh epoch; a sync
    /// then restores exactly what the front end declares.
    #[tokio::test]
    async fn a_partition_that_lost_a_lease_makes_the_front_end_resync() {
        let (store, parts) = router();
        let session = SessionId::parse("s", "fe").expect("id");
        let names = one_per_partition();
        let KeepAliveOutcome::Unknown { epoch: first, .. } = store.keep_alive(&session, None).await.expect("open")
        else {
            panic!("a new session is unknown");
        };
        let ops: Vec<Operation> = names.iter().map(|n| attach("c1", n)).collect();
        store.apply(&session, &ops, false).await.expect("attach");
        assert!(matches!(
            store.keep_alive(&session, None).await.expect("alive"),
            KeepAliveOutcome::Active { epoch, .. } if epoch == first
        ));
        // partition 1 loses it
        let lost = partition_of(&names[1], 3) as usize;
        parts[lost].close_session(&session).await.expect("lose");
        let again = store.keep_alive(&session, None).await.expect("keep alive");
        let KeepAliveOutcome::Unknown { epoch: fresh, .. } = again else {
            panic!("a lost partition makes the session unknown: {again:?}");
        };
        assert_ne!(fresh, first);
        assert!(store.session_state(&session).await.expect("state").is_empty());
        let channels: Vec<ChannelName> = names
            .iter()
            .map(|n| ChannelName::parse("ch", n.clone()).expect("name"))
            .collect();
        assert!(store
            .get(&channels)
            .await
            .expect("get")
            .iter()
            .all(|m| m.connections == 0));
        // the front end re-syncs
        let desired: Vec<HeldAttachment> = channels
            .iter()
            .map(|ch| HeldAttachment {
                connection: ConnectionId::parse("c", "c1").expect("id"),
                channel: ch.clone(),
                modes: ModeSet::EMPTY,
                members: Vec::new(),
            })
            .collect();
        let synced = store.sync_session(&session, &desired, None).await.expect("sync");
        assert_eq!((synced.epoch, synced.added), (fresh, 3));
        assert!(store
            .get(&channels)
            .await
            .expect("get")
            .iter()
            .all(|m| m.connections == 1));
        assert!(matches!(
            store.keep_alive(&session, None).await.expect("alive"),
            KeepAliveOutcome::Active { epoch, .. } if epoch == fresh
        ));
    }
}
