//! One SubscribeOccupancy stream: the initial snapshot (or the replay of
//! what changed since a resume point), then live events, with category
//! filtering, debouncing, and resume ids.
//!
//! The task owns all per-subscriber state. It reads its hub inbox (newest
//! event per channel) and writes into a small bounded channel to the gRPC
//! stream; while the client is slow the inbox coalesces, so memory stays
//! bounded by the number of followed channels.
//!
//! Resume ids: each event's id carries, per event shard, a position up to
//! which this subscriber has received everything it asked for. A channel
//! with a change still held back (debounced, or not yet written to the
//! client) keeps its shard's position just below that change, so resuming
//! from any id ever sent misses nothing.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{debug, warn};

use super::hub::{Hub, HubEvent, Registration};
use super::wire::SubscribeOccupancyResponse;
use crate::domain::events::{event_id, shard_of, ResumeToken};
use crate::domain::{Category, ChannelName, ListOrder, ListQuery, Metrics, Pos};
use crate::error::Error;
use crate::store::Store;

/// What one stream follows and how.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Named channels.
    pub channels: Vec<ChannelName>,
    /// Names under this prefix, if any.
    pub prefix: Option<String>,
    /// Categories whose change triggers an event; empty for all.
    pub categories: Vec<Category>,
    /// Debounce window for changes that flip no category to or from zero.
    pub debounce: Duration,
    /// Where to continue, if resuming.
    pub resume: Option<ResumeToken>,
}

/// An item of the gRPC stream.
pub type Item = Result<SubscribeOccupancyResponse, Status>;

/// Channels read per page of a prefix snapshot.
const SNAPSHOT_PAGE: u32 = 1000;
/// History entries read per call when resuming.
const HISTORY_PAGE: usize = 1000;
/// Bound on history pages per shard when resuming (far more than a
/// trimmed stream can hold).
const MAX_HISTORY_PAGES: usize = 10_000;
/// Delay before retrying a snapshot that failed (Redis still away).
const RESYNC_RETRY: Duration = Duration::from_millis(500);

#[derive(Debug)]
struct Chan {
    shard: u32,
    /// What the client will hold once the write queue is flushed.
    latest_out: Option<Metrics>,
    /// Latest position accounted for.
    known: Pos,
    /// Newest change held back by the debounce window.
    held: Option<Arc<HubEvent>>,
    /// Position of the oldest change held back.
    held_since: Option<Pos>,
    /// End of the debounce window opened by the last write.
    window_until: Option<Instant>,
}

struct Sub {
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    spec: Spec,
    shards: u32,
    chans: HashMap<ChannelName, Chan>,
    seen: Vec<Pos>,
    /// Per shard, positions of changes not yet written (queued or held).
    unsent: Vec<BTreeMap<Pos, u32>>,
    /// Events to write, in order, each with its key in `unsent`.
    ready: VecDeque<(Arc<HubEvent>, Pos)>,
    timers: BinaryHeap<Reverse<(Instant, ChannelName)>>,
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Runs one subscription until the client leaves, `cancel` fires (the
/// stream then ends with UNAVAILABLE), or the initial snapshot fails.
pub async fn run(store: Arc<dyn Store>, hub: Arc<Hub>, spec: Spec, tx: mpsc::Sender<Item>, cancel: CancellationToken) {
    let shards = hub.shards();
    let mut sub = Sub {
        store,
        hub: hub.clone(),
        seen: vec![Pos::ZERO; shards as usize],
        unsent: vec![BTreeMap::new(); shards as usize],
        shards,
        spec,
        chans: HashMap::new(),
        ready: VecDeque::new(),
        timers: BinaryHeap::new(),
    };
    // register before reading anything, so no change falls in between
    let reg = hub.register(&sub.spec.channels, sub.spec.prefix.as_deref());
    let mut resyncs = hub.resyncs();
    resyncs.borrow_and_update();
    let start = match sub.spec.resume.clone() {
        Some(token) => sub.resume(&reg, token).await,
        None => sub.snapshot(&reg, false).await,
    };
    if let Err(e) = start {
        let _ = tx.send(Err(Status::from(e))).await;
        return;
    }
    let mut retry_resync: Option<Instant> = None;
    loop {
        if sub.flush(&tx, &cancel).await.is_err() {
            return;
        }
        let next_timer = sub.timers.peek().map(|Reverse((t, _))| *t);
        let wake = match (next_timer, retry_resync) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            () = tx.closed() => return,
            changed = resyncs.changed() => {
                if changed.is_err() {
                    return;
                }
                retry_resync = sub.resync(&reg).await;
            }
            () = reg.inbox.notify.notified() => sub.drain(&reg),
            () = sleep_until(wake), if wake.is_some() => {
                let now = Instant::now();
                if retry_resync.is_some_and(|t| t <= now) {
                    retry_resync = sub.resync(&reg).await;
                }
                sub.fire_timers(now);
            }
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl Sub {
    fn matches(&self, ch: &ChannelName) -> bool {
        self.spec.prefix.as_deref().is_some_and(|p| ch.as_str().starts_with(p)) || self.spec.channels.contains(ch)
    }

    fn selected(&self) -> &[Category] {
        if self.spec.categories.is_empty() {
            &Category::ALL
        } else {
            &self.spec.categories
        }
    }

    fn changed(&self, a: &Metrics, b: &Metrics) -> bool {
        self.selected().iter().any(|c| a.get(*c) != b.get(*c))
    }

    fn flips(&self, a: &Metrics, b: &Metrics) -> bool {
        self.selected().iter().any(|c| (a.get(*c) == 0) != (b.get(*c) == 0))
    }

    fn chan(&mut self, ch: &ChannelName) -> &mut Chan {
        let shards = self.shards;
        self.chans.entry(ch.clone()).or_insert_with(|| Chan {
            shard: shard_of(ch.as_str(), shards),
            latest_out: None,
            known: Pos::ZERO,
            held: None,
            held_since: None,
            window_until: None,
        })
    }

    fn mark_unsent(&mut self, shard: u32, pos: Pos) {
        *self.unsent[shard as usize].entry(pos).or_insert(0) += 1;
    }

    fn clear_unsent(&mut self, shard: u32, pos: Pos) {
        let u = &mut self.unsent[shard as usize];
        if let Some(n) = u.get_mut(&pos) {
            *n -= 1;
            if *n == 0 {
                u.remove(&pos);
            }
        }
    }

    /// Drops the channel's held change, if any.
    fn drop_held(&mut self, ch: &ChannelName) -> Option<Pos> {
        let c = self.chan(ch);
        let shard = c.shard;
        c.held = None;
        let since = c.held_since.take();
        if let Some(p) = since {
            self.clear_unsent(shard, p);
        }
        since
    }

    /// Queues `ev` for writing; `unsent` is the oldest change it covers.
    fn enqueue(&mut self, ev: Arc<HubEvent>, unsent: Pos) {
        let debounce = self.spec.debounce;
        let c = self.chan(&ev.channel);
        c.latest_out = Some(ev.metrics);
        c.window_until = (!debounce.is_zero()).then(|| Instant::now() + debounce);
        let shard = c.shard;
        self.mark_unsent(shard, unsent);
        self.ready.push_back((ev, unsent));
    }

    /// Takes a change into account: writes it now, holds it for the end of
    /// the debounce window, or drops it when the client's view already
    /// matches. `force` writes it in any case.
    fn consider(&mut self, ev: Arc<HubEvent>, force: bool) {
        let ch = ev.channel.clone();
        let debounce = self.spec.debounce;
        let c = self.chan(&ch);
        let reference = c.latest_out.unwrap_or_default();
        let never_sent = c.latest_out.is_none();
        let window_until = c.window_until;
        // a channel this subscription never wrote may be held by the client
        // in any state (after a resume), so its first change always goes
        if !force && !never_sent && !self.changed(&reference, &ev.metrics) {
            // back to what the client holds (for what it asked for)
            self.drop_held(&ch);
            return;
        }
        let now = Instant::now();
        let immediate = force
            || debounce.is_zero()
            || never_sent
            || self.flips(&reference, &ev.metrics)
            || window_until.is_none_or(|w| now >= w);
        if immediate {
            let since = self.drop_held(&ch).unwrap_or(ev.pos).min(ev.pos);
            self.enqueue(ev, since);
        } else {
            let c = self.chan(&ch);
            let shard = c.shard;
            let first = c.held_since.is_none();
            if first {
                c.held_since = Some(ev.pos);
            }
            c.held = Some(ev.clone());
            if first {
                self.mark_unsent(shard, ev.pos);
                if let Some(w) = window_until {
                    self.timers.push(Reverse((w, ch)));
                }
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((t, _))) = self.timers.peek() {
            if *t > now {
                break;
            }
            let Some(Reverse((_, ch))) = self.timers.pop() else {
                break;
            };
            let Some(c) = self.chans.get_mut(&ch) else { continue };
            if let (Some(ev), Some(since)) = (c.held.take(), c.held_since.take()) {
                let shard = c.shard;
                self.clear_unsent(shard, since);
                self.enqueue(ev, since);
            }
        }
    }

    /// Moves everything in the inbox into the subscriber's state.
    fn drain(&mut self, reg: &Registration) {
        // read the watermark first: every change it covers is already in
        // the inbox (or was taken before)
        let watermark = self.hub.watermark();
        for ev in reg.inbox.take() {
            if !self.matches(&ev.channel) {
                continue;
            }
            let c = self.chan(&ev.channel);
            if ev.pos <= c.known {
                continue;
            }
            c.known = ev.pos;
            self.consider(ev, false);
        }
        for (s, w) in self.seen.iter_mut().zip(watermark) {
            *s = (*s).max(w);
        }
    }

    /// The resume token to hand out now.
    fn token(&self) -> ResumeToken {
        ResumeToken {
            positions: self
                .seen
                .iter()
                .zip(&self.unsent)
                .map(|(seen, unsent)| match unsent.keys().next() {
                    Some(first) => (*seen).min(first.pred()),
                    None => *seen,
                })
                .collect(),
        }
    }

    /// Writes every queued event, in order.
    async fn flush(&mut self, tx: &mpsc::Sender<Item>, cancel: &CancellationToken) -> Result<(), ()> {
        while let Some((ev, unsent)) = self.ready.pop_front() {
            self.clear_unsent(ev.shard, unsent);
            let id = event_id(ev.pos, &self.token());
            let item = Ok(SubscribeOccupancyResponse::from_parts(&id, &ev.body));
            tokio::select! {
                r = tx.send(item) => r.map_err(|_| ())?,
                () = cancel.cancelled() => return Err(()),
            }
        }
        Ok(())
    }

    /// Metrics of `names` as events at the snapshot's positions.
    async fn snapshot_of(&mut self, names: &[ChannelName], exact: bool, force: bool) -> Result<Vec<Pos>, Error> {
        let mut last = Vec::new();
        for chunk in names.chunks(SNAPSHOT_PAGE as usize) {
            let snap = self.store.snapshot(chunk).await?;
            let ts = wall_ms();
            for (name, m) in chunk.iter().zip(snap.metrics) {
                let shard = shard_of(name.as_str(), self.shards);
                let pos = snap.positions.get(shard as usize).copied().unwrap_or_default();
                let c = self.chan(name);
                c.known = if exact { pos } else { c.known.max(pos) };
                let ev = Arc::new(HubEvent::new(shard, pos, name.clone(), m, ts));
                self.consider(ev, force);
            }
            last = snap.positions;
        }
        Ok(last)
    }

    /// The first snapshot (`resync` false) or a fresh one after the event
    /// log was lost (`resync` true: only what differs from what the client
    /// holds is written).
    async fn snapshot(&mut self, reg: &Registration, resync: bool) -> Result<(), Error> {
        let mut named: BTreeSet<ChannelName> = self.spec.channels.iter().cloned().collect();
        let mut positions = self
            .snapshot_of(&named.iter().cloned().collect::<Vec<_>>(), resync, !resync)
            .await?;
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
                .filter(|(n, c)| !named.contains(*n) && c.latest_out.is_some_and(|m| m != Metrics::default()))
                .map(|(n, _)| n.clone())
                .collect();
            let p = self.snapshot_of(&others, true, false).await?;
            if !p.is_empty() {
                positions = p;
            }
        }
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
    async fn resync(&mut self, reg: &Registration) -> Option<Instant> {
        // held changes are superseded by the snapshot; queued ones are
        // still written (they are older states, corrected right after)
        let held: Vec<ChannelName> = self
            .chans
            .iter()
            .filter(|(_, c)| c.held.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        for ch in held {
            self.drop_held(&ch);
        }
        match self.snapshot(reg, true).await {
            Ok(()) => {
                debug!("subscription resynced");
                None
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
    async fn resume(&mut self, reg: &Registration, token: ResumeToken) -> Result<(), Error> {
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
