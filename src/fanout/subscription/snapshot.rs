//! What a subscription reads from the store: the first snapshot (a page
//! at a time under a prefix), a fresh one after the event log was lost,
//! and the replay of what changed since a resume point.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, warn};

use super::{Sub, Walk};
use crate::domain::events::{shard_of, wall_ms, ResumeToken};
use crate::domain::limits::{HISTORY_PAGE, MAX_HISTORY_PAGES, SNAPSHOT_PAGE};
use crate::domain::{ChannelName, ListOrder, ListQuery, Metrics, Pos};
use crate::error::Error;
use crate::fanout::hub::{HubEvent, Registration};

/// Delay before retrying a snapshot that failed (Redis still away).
const RESYNC_RETRY: Duration = Duration::from_millis(500);

impl Sub {
    /// Metrics of `names` as events at the snapshot's positions.
    pub(super) async fn snapshot_of(
        &mut self,
        names: &[ChannelName],
        exact: bool,
        force: bool,
    ) -> Result<Vec<Pos>, Error> {
        let mut last = Vec::new();
        for chunk in names.chunks(SNAPSHOT_PAGE as usize) {
            let snap = self.store.snapshot(chunk).await?;
            let ts = wall_ms();
            for (name, m) in chunk.iter().zip(snap.metrics) {
                let shard = shard_of(name.as_str(), self.shards);
                let pos = snap.positions.get(shard as usize).copied().unwrap_or_default();
                let i = self.slot(name);
                let c = &mut self.chans[i];
                c.known = if exact { pos } else { c.known.max(pos) };
                let ev = Arc::new(HubEvent::new(shard, pos, name.clone(), m, ts));
                self.consider_at(i, ev, force);
            }
            last = snap.positions;
        }
        Ok(last)
    }

    /// The first snapshot (`resync` false) or a fresh one after the event
    /// log was lost (`resync` true: only what differs from what the client
    /// holds is written).
    pub(super) async fn snapshot(&mut self, reg: &Registration, resync: bool) -> Result<(), Error> {
        let mut named: BTreeSet<ChannelName> = self.spec.channels.iter().cloned().collect();
        let mut positions = self
            .snapshot_of(&named.iter().cloned().collect::<Vec<_>>(), resync, !resync)
            .await?;
        if let (Some(prefix), false) = (self.spec.prefix.clone(), resync) {
            // the first snapshot: its first page now, the rest as the
            // client reads (`walk_step`)
            self.walk = Some(Walk {
                prefix,
                cursor: String::new(),
                positions,
            });
            return self.walk_step(reg).await;
        }
        if let Some(prefix) = self.spec.prefix.clone() {
            let mut cursor = String::new();
            loop {
                let q = ListQuery::new(prefix.clone(), SNAPSHOT_PAGE, &cursor, ListOrder::Name, false)?;
                let page = self.store.list(&q).await?;
                let names: Vec<ChannelName> = page.channels.into_iter().map(|c| c.name).collect();
                let p = self.snapshot_of(&names, resync, !resync).await?;
                if !p.is_empty() {
                    positions = p;
                }
                named.extend(names);
                match page.next_cursor {
                    Some(c) => cursor = c,
                    None => break,
                }
            }
        }
        if resync {
            // channels the client holds as active that were not seen: they
            // read back as zero now
            let others: Vec<ChannelName> = self
                .chans
                .iter()
                .filter(|c| !named.contains(&c.name) && c.latest_out.is_some_and(|m| m != Metrics::default()))
                .map(|c| c.name.clone())
                .collect();
            let p = self.snapshot_of(&others, true, false).await?;
            if !p.is_empty() {
                positions = p;
            }
        }
        self.finish_snapshot(reg, positions, resync).await
    }

    /// Reads the next page of the first snapshot's walk and queues its
    /// channels; after the last page, finishes the snapshot.
    pub(super) async fn walk_step(&mut self, reg: &Registration) -> Result<(), Error> {
        let Some(walk) = self.walk.as_ref() else { return Ok(()) };
        let q = ListQuery::new(walk.prefix.clone(), SNAPSHOT_PAGE, &walk.cursor, ListOrder::Name, false)?;
        let page = self.store.list(&q).await?;
        let names: Vec<ChannelName> = page.channels.into_iter().map(|c| c.name).collect();
        let p = self.snapshot_of(&names, false, true).await?;
        let Some(walk) = self.walk.as_mut() else { return Ok(()) };
        if !p.is_empty() {
            walk.positions = p;
        }
        match page.next_cursor {
            Some(c) => {
                walk.cursor = c;
                Ok(())
            }
            None => {
                let positions = std::mem::take(&mut walk.positions);
                self.walk = None;
                self.finish_snapshot(reg, positions, false).await
            }
        }
    }

    /// Ends a snapshot read at `positions`: what the subscriber has seen
    /// of the event log, then the changes that arrived meanwhile.
    pub(super) async fn finish_snapshot(
        &mut self,
        reg: &Registration,
        mut positions: Vec<Pos>,
        resync: bool,
    ) -> Result<(), Error> {
        if positions.is_empty() {
            positions = self.store.snapshot(&[]).await?.positions;
        }
        for (s, p) in self.seen.iter_mut().zip(positions) {
            *s = if resync { p } else { (*s).max(p) };
        }
        self.drain(reg);
        Ok(())
    }

    /// Takes a fresh snapshot after the hub said changes may be lost;
    /// returns when to retry if it failed.
    /// `retrying`: an earlier attempt failed (then a failure is not logged
    /// again: the health probe reports the outage).
    pub(super) async fn resync(&mut self, reg: &Registration, retrying: bool) -> Option<Instant> {
        // held changes are superseded by the snapshot; queued ones are
        // still written (they are older states, corrected right after)
        self.floor.clear();
        for i in 0..self.chans.len() {
            if self.chans[i].held.is_some() {
                self.drop_held(i);
            }
        }
        match self.snapshot(reg, true).await {
            Ok(()) => {
                debug!("subscription resynced");
                None
            }
            Err(e) if retrying => {
                debug!(cause = %e, "subscription resync failed again, retrying");
                Some(Instant::now() + RESYNC_RETRY)
            }
            Err(e) => {
                warn!(cause = %e, "subscription resync failed, retrying");
                Some(Instant::now() + RESYNC_RETRY)
            }
        }
    }

    /// Replays what changed since `token` and writes the current metrics of
    /// each such channel; falls back to a full snapshot when the log no
    /// longer covers the token.
    pub(super) async fn resume(&mut self, reg: &Registration, token: ResumeToken) -> Result<(), Error> {
        let mut changed: BTreeSet<ChannelName> = BTreeSet::new();
        let mut gap = false;
        'shards: for (shard, after) in token.positions.iter().enumerate() {
            let mut after = *after;
            for _ in 0..MAX_HISTORY_PAGES {
                let h = self.store.history(shard as u32, after, HISTORY_PAGE).await?;
                if h.gap {
                    gap = true;
                    break 'shards;
                }
                for (p, ch) in h.changes {
                    after = p;
                    if self.matches(&ch) {
                        changed.insert(ch);
                    }
                }
                if !h.more {
                    continue 'shards;
                }
            }
            gap = true;
            break;
        }
        if gap {
            debug!("resume point no longer in the event log, sending a full snapshot");
            return self.snapshot(reg, false).await;
        }
        self.floor.clone_from(&token.positions);
        self.seen = token.positions;
        let names: Vec<ChannelName> = changed.into_iter().collect();
        let positions = self.snapshot_of(&names, false, true).await?;
        let positions = if positions.is_empty() {
            self.store.snapshot(&[]).await?.positions
        } else {
            positions
        };
        for (s, p) in self.seen.iter_mut().zip(positions) {
            *s = (*s).max(p);
        }
        self.drain(reg);
        Ok(())
    }
}
