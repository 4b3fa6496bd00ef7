//! One SubscribeOccupancy stream: the initial snapshot (or the replay of
//! what changed since a resume point), then live events, with category
//! filtering, debouncing, and resume ids.
//!
//! The stream owns all per-subscriber state and does its work when the
//! task writing the gRPC response polls it (no task or channel of its own):
//! it reads its hub inbox and yields encoded responses; while the client is
//! slow, HTTP/2 flow control stops the polling and the inbox coalesces
//! (newest event per channel), so memory stays bounded by the number of
//! followed channels.
//!
//! Resume ids: each event's id carries, per event shard, a position up to
//! which this subscriber has received everything it asked for. A channel
//! with a change still held back (debounced, or not yet written to the
//! client) keeps its shard's position just below that change, so resuming
//! from any id ever sent misses nothing.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::hub::{Hub, HubEvent, Registration};
use super::wire::{Encoder, SubscribeOccupancyResponse};
use crate::domain::events::{shard_of, wall_ms, ResumeToken};
use crate::domain::limits::{HISTORY_PAGE, MAX_HISTORY_PAGES, SNAPSHOT_PAGE};
use crate::domain::{Category, ChannelName, ListOrder, ListQuery, Metrics, Pos};
use crate::error::Error;
use crate::store::Store;

/// What one stream follows and how.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Named channels.
    pub channels: Vec<ChannelName>,
    /// Names under this prefix, if any (the empty prefix for every channel).
    pub prefix: Option<String>,
    /// Categories whose change triggers an event; empty for all.
    pub categories: Vec<Category>,
    /// Debounce window for changes that flip no category to or from zero.
    pub debounce: Duration,
    /// Where to continue, if resuming.
    pub resume: Option<ResumeToken>,
}

/// An item of a subscription's stream: a response, or the error that ends
/// it (the gRPC side answers it as a status, the HTTP side as an SSE
/// `error` event; both chosen in `error.rs`).
pub type Item = Result<SubscribeOccupancyResponse, Error>;

/// Delay before retrying a snapshot that failed (Redis still away).
const RESYNC_RETRY: Duration = Duration::from_millis(500);

#[derive(Debug)]
struct Chan {
    name: ChannelName,
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
    /// Every channel this subscription has seen, found by name through
    /// `chan_index` (one hash per event; entries are never removed).
    chans: Vec<Chan>,
    chan_index: HashMap<ChannelName, usize>,
    seen: Vec<Pos>,
    /// Per shard, positions of changes not yet written (queued or held).
    unsent: Vec<BTreeMap<Pos, u32>>,
    /// Events to write, in order, each with its key in `unsent`.
    ready: VecDeque<(Arc<HubEvent>, Pos)>,
    timers: BinaryHeap<Reverse<(Instant, ChannelName)>>,
    /// Scratch space reused from one event to the next: the response
    /// encoder, the resume token's positions, the hub's watermark and the
    /// events taken from the inbox.
    encoder: Encoder,
    token_buf: Vec<Pos>,
    watermark_buf: Vec<Pos>,
    inbox_buf: Vec<Arc<HubEvent>>,
    /// The rest of a first snapshot under a prefix (or of every channel),
    /// read one page at a time as the client takes the previous one.
    walk: Option<Walk>,
}

/// Where a first snapshot's walk of the channel listing stands.
#[derive(Debug)]
struct Walk {
    prefix: String,
    cursor: String,
    /// Event log positions of the newest snapshot read.
    positions: Vec<Pos>,
}

/// One subscription as the stream of its responses: the snapshot (or the
/// replay of a resume), then live events, until the client leaves (the
/// stream is dropped) or the hub goes away. A failed snapshot is the
/// stream's only item.
///
/// The stream does its work when polled, in the task that writes the
/// response: while the client does not read (HTTP/2 flow control), it is
/// not polled and its inbox coalesces, so memory stays bounded by the
/// number of followed channels. Ending it on shutdown is the caller's job.
///
/// Right after the snapshot or replay comes one `live` message; a stream
/// with nothing to send for `heartbeat` sends a heartbeat message.
pub fn stream(
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    spec: Spec,
    heartbeat: Duration,
) -> impl Stream<Item = Item> + Send + 'static {
    futures::stream::unfold(Phase::Start(store, hub, spec, heartbeat), |phase| async move {
        let mut live = match phase {
            Phase::Start(store, hub, spec, heartbeat) => match Live::start(store, hub, spec, heartbeat).await {
                Ok(live) => Box::new(live),
                Err(e) => return Some((Err(e), Phase::Done)),
            },
            Phase::Live(live) => live,
            Phase::Done => return None,
        };
        match live.next().await? {
            Ok(item) => Some((Ok(item), Phase::Live(live))),
            // a page of the first snapshot could not be read: end the
            // stream; the client resumes (its ids then ask for a snapshot)
            Err(e) => Some((Err(e), Phase::Done)),
        }
    })
}

/// Where a subscription stream is.
enum Phase {
    Start(Arc<dyn Store>, Arc<Hub>, Spec, Duration),
    Live(Box<Live>),
    Done,
}

/// A subscription past its snapshot.
struct Live {
    sub: Sub,
    reg: Registration,
    resyncs: watch::Receiver<u64>,
    retry_resync: Option<Instant>,
    /// Whether the `live` message went out (after the snapshot or replay).
    live_sent: bool,
    /// Quiet time before a heartbeat.
    heartbeat: Duration,
    /// When the last message went out.
    last_sent: Instant,
}

impl Live {
    /// Registers with the hub and takes the snapshot (or replays since the
    /// resume point).
    async fn start(store: Arc<dyn Store>, hub: Arc<Hub>, spec: Spec, heartbeat: Duration) -> Result<Self, Error> {
        let shards = hub.shards();
        let mut sub = Sub {
            store,
            hub: hub.clone(),
            seen: vec![Pos::ZERO; shards as usize],
            unsent: vec![BTreeMap::new(); shards as usize],
            shards,
            spec,
            chans: Vec::new(),
            chan_index: HashMap::new(),
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            encoder: Encoder::default(),
            token_buf: Vec::new(),
            watermark_buf: Vec::new(),
            inbox_buf: Vec::new(),
            walk: None,
        };
        // register before reading anything, so no change falls in between
        let reg = hub.register(&sub.spec.channels, sub.spec.prefix.as_deref());
        let mut resyncs = hub.resyncs();
        resyncs.borrow_and_update();
        // a replica with no subscription stops reading the log: wait until
        // it follows it again, so the snapshot is not older than the feed
        hub.ready().await;
        match sub.spec.resume.clone() {
            Some(token) => sub.resume(&reg, token).await?,
            None => sub.snapshot(&reg, false).await?,
        }
        Ok(Self {
            sub,
            reg,
            resyncs,
            retry_resync: None,
            live_sent: false,
            heartbeat,
            last_sent: Instant::now(),
        })
    }

    /// The next response, in order; `None` when the hub went away, an
    /// error when a page of the first snapshot could not be read.
    async fn next(&mut self) -> Option<Result<SubscribeOccupancyResponse, Error>> {
        let item = self.next_message().await?;
        self.last_sent = Instant::now();
        Some(item)
    }

    async fn next_message(&mut self) -> Option<Result<SubscribeOccupancyResponse, Error>> {
        let Live {
            sub,
            reg,
            resyncs,
            retry_resync,
            live_sent,
            heartbeat,
            last_sent,
        } = self;
        let beat_at = *last_sent + *heartbeat;
        loop {
            if let Some(item) = sub.next_ready() {
                return Some(Ok(item));
            }
            // the first snapshot goes on, a page at a time, once the client
            // has taken the previous page: memory holds one page, however
            // many channels there are
            if sub.walk.is_some() {
                if let Err(e) = sub.walk_step(reg).await {
                    return Some(Err(e));
                }
                continue;
            }
            if !*live_sent {
                // the snapshot (or replay) is out: live from here
                *live_sent = true;
                return Some(Ok(SubscribeOccupancyResponse::live(wall_ms())));
            }
            let next_timer = sub.timers.peek().map(|Reverse((t, _))| *t);
            let wake = match (next_timer, *retry_resync) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                biased;
                changed = resyncs.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    let retrying = retry_resync.is_some();
                    *retry_resync = sub.resync(reg, retrying).await;
                }
                () = reg.inbox.notify.notified() => sub.drain(reg),
                () = sleep_until(wake), if wake.is_some() => {
                    let now = Instant::now();
                    if retry_resync.is_some_and(|t| t <= now) {
                        *retry_resync = sub.resync(reg, true).await;
                    }
                    sub.fire_timers(now);
                }
                () = tokio::time::sleep_until(beat_at) => {
                    return Some(Ok(SubscribeOccupancyResponse::heartbeat(wall_ms())));
                }
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

    /// The index of the channel's state, created on first sight.
    fn slot(&mut self, ch: &ChannelName) -> usize {
        if let Some(&i) = self.chan_index.get(ch) {
            return i;
        }
        let i = self.chans.len();
        self.chans.push(Chan {
            name: ch.clone(),
            shard: shard_of(ch.as_str(), self.shards),
            latest_out: None,
            known: Pos::ZERO,
            held: None,
            held_since: None,
            window_until: None,
        });
        self.chan_index.insert(ch.clone(), i);
        i
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

    /// Drops the held change of channel `i`, if any.
    fn drop_held(&mut self, i: usize) -> Option<Pos> {
        let c = &mut self.chans[i];
        let shard = c.shard;
        c.held = None;
        let since = c.held_since.take();
        if let Some(p) = since {
            self.clear_unsent(shard, p);
        }
        since
    }

    /// Queues `ev` (of channel `i`) for writing; `unsent` is the oldest
    /// change it covers.
    fn enqueue(&mut self, i: usize, ev: Arc<HubEvent>, unsent: Pos) {
        let debounce = self.spec.debounce;
        let c = &mut self.chans[i];
        c.latest_out = Some(ev.metrics);
        c.window_until = (!debounce.is_zero()).then(|| Instant::now() + debounce);
        let shard = c.shard;
        self.mark_unsent(shard, unsent);
        self.ready.push_back((ev, unsent));
    }

    /// Takes a change of channel `i` into account: writes it now, holds it
    /// for the end of the debounce window, or drops it when the client's
    /// view already matches. `force` writes it in any case.
    fn consider_at(&mut self, i: usize, ev: Arc<HubEvent>, force: bool) {
        let debounce = self.spec.debounce;
        let c = &self.chans[i];
        let reference = c.latest_out.unwrap_or_default();
        let never_sent = c.latest_out.is_none();
        let window_until = c.window_until;
        // a channel this subscription never wrote may be held by the client
        // in any state (after a resume), so its first change always goes
        if !force && !never_sent && !self.changed(&reference, &ev.metrics) {
            // back to what the client holds (for what it asked for)
            self.drop_held(i);
            return;
        }
        let immediate = force
            || debounce.is_zero()
            || never_sent
            || self.flips(&reference, &ev.metrics)
            || window_until.is_none_or(|w| Instant::now() >= w);
        if immediate {
            let since = self.drop_held(i).unwrap_or(ev.pos).min(ev.pos);
            self.enqueue(i, ev, since);
        } else {
            let c = &mut self.chans[i];
            let shard = c.shard;
            let first = c.held_since.is_none();
            if first {
                c.held_since = Some(ev.pos);
            }
            c.held = Some(ev.clone());
            if first {
                self.mark_unsent(shard, ev.pos);
                if let Some(w) = window_until {
                    self.timers.push(Reverse((w, ev.channel.clone())));
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
            let Some(&i) = self.chan_index.get(&ch) else { continue };
            let c = &mut self.chans[i];
            if let (Some(ev), Some(since)) = (c.held.take(), c.held_since.take()) {
                let shard = c.shard;
                self.clear_unsent(shard, since);
                self.enqueue(i, ev, since);
            }
        }
    }

    /// Moves everything in the inbox into the subscriber's state.
    fn drain(&mut self, reg: &Registration) {
        // read the watermark first: every change it covers is already in
        // the inbox (or was taken before)
        let mut watermark = std::mem::take(&mut self.watermark_buf);
        self.hub.watermark_into(&mut watermark);
        let mut events = std::mem::take(&mut self.inbox_buf);
        reg.inbox.take_into(&mut events);
        for ev in events.drain(..) {
            if !self.matches(&ev.channel) {
                continue;
            }
            let i = self.slot(&ev.channel);
            let c = &mut self.chans[i];
            if ev.pos <= c.known {
                continue;
            }
            c.known = ev.pos;
            self.consider_at(i, ev, false);
        }
        self.inbox_buf = events;
        for (s, w) in self.seen.iter_mut().zip(&watermark) {
            *s = (*s).max(*w);
        }
        self.watermark_buf = watermark;
    }

    /// The resume token to hand out now, into `token_buf`.
    fn fill_token(&mut self) {
        self.token_buf.clear();
        self.token_buf.extend(
            self.seen
                .iter()
                .zip(&self.unsent)
                .map(|(seen, unsent)| match unsent.keys().next() {
                    Some(first) => (*seen).min(first.pred()),
                    None => *seen,
                }),
        );
    }

    /// The next queued event as a response, if any (events leave in the
    /// order they were queued).
    fn next_ready(&mut self) -> Option<SubscribeOccupancyResponse> {
        let (ev, unsent) = self.ready.pop_front()?;
        self.clear_unsent(ev.shard, unsent);
        self.fill_token();
        Some(self.encoder.response(ev.pos, &self.token_buf, &ev.body))
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
    async fn snapshot(&mut self, reg: &Registration, resync: bool) -> Result<(), Error> {
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
    async fn walk_step(&mut self, reg: &Registration) -> Result<(), Error> {
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
    async fn finish_snapshot(
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
    async fn resync(&mut self, reg: &Registration, retrying: bool) -> Option<Instant> {
        // held changes are superseded by the snapshot; queued ones are
        // still written (they are older states, corrected right after)
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use futures::StreamExt;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::domain::{
        Applied, Batch, ConnectionId, HeldAttachment, KeepAliveOutcome, ListPage, ModeSet, Operation, SessionId,
    };
    use crate::store::{ChangeSink, History, MemoryStore, ReapReport, Snapshot, SyncOutcome};
    use crate::Result;

    /// The memory store, counting listing pages read.
    struct CountingLists {
        inner: MemoryStore,
        lists: AtomicUsize,
    }

    #[async_trait]
    impl Store for CountingLists {
        async fn write(&self, s: &SessionId, batch: Batch<'_>) -> Result<Applied> {
            self.inner.write(s, batch).await
        }
        async fn keep_alive_as(&self, s: &SessionId, owner: &str, ttl: Option<u64>) -> Result<KeepAliveOutcome> {
            self.inner.keep_alive_as(s, owner, ttl).await
        }
        async fn close_session_as(&self, s: &SessionId, owner: &str) -> Result<Option<u64>> {
            self.inner.close_session_as(s, owner).await
        }
        async fn get(&self, c: &[ChannelName]) -> Result<Vec<Metrics>> {
            self.inner.get(c).await
        }
        async fn list(&self, q: &ListQuery) -> Result<crate::domain::ListPage> {
            self.lists.fetch_add(1, Ordering::SeqCst);
            let page: ListPage = self.inner.list(q).await?;
            Ok(page)
        }
        async fn stats(&self) -> Result<crate::domain::Totals> {
            self.inner.stats().await
        }
        async fn session_state(&self, s: &SessionId) -> Result<Vec<HeldAttachment>> {
            self.inner.session_state(s).await
        }
        async fn sync_session_as(
            &self,
            s: &SessionId,
            owner: &str,
            d: &[HeldAttachment],
            ttl: Option<u64>,
        ) -> Result<SyncOutcome> {
            self.inner.sync_session_as(s, owner, d, ttl).await
        }
        async fn reap(&self) -> Result<ReapReport> {
            self.inner.reap().await
        }
        fn shards(&self) -> u32 {
            self.inner.shards()
        }
        async fn snapshot(&self, c: &[ChannelName]) -> Result<Snapshot> {
            self.inner.snapshot(c).await
        }
        async fn history(&self, shard: u32, after: Pos, limit: usize) -> Result<History> {
            self.inner.history(shard, after, limit).await
        }
        fn feed(&self, sink: Arc<dyn ChangeSink>, cancel: CancellationToken) {
            self.inner.feed(sink, cancel);
        }
        async fn ping(&self) -> Result<()> {
            self.inner.ping().await
        }
    }

    /// A snapshot of every channel is read a page at a time, each page
    /// once the client has taken the previous one: a subscriber holds one
    /// page of events, however many channels are active.
    #[tokio::test]
    async fn every_channel_snapshot_is_read_a_page_at_a_time() {
        let store = Arc::new(CountingLists {
            inner: MemoryStore::new(Duration::from_secs(60)),
            lists: AtomicUsize::new(0),
        });
        let session = SessionId::parse("s", "fe").unwrap();
        let ops: Vec<Operation> = (0..2_500)
            .map(|i| Operation::Attach {
                connection: ConnectionId::parse("c", format!("c{i}")).unwrap(),
                channel: ChannelName::parse("ch", format!("ch:{i:04}")).unwrap(),
                modes: ModeSet::EMPTY,
            })
            .collect();
        store.apply(&session, &ops, false).await.unwrap();
        let hub = Hub::new(store.shards());
        store.feed(hub.clone(), CancellationToken::new());
        let spec = Spec {
            channels: vec![],
            prefix: Some(String::new()),
            categories: vec![],
            debounce: Duration::ZERO,
            resume: None,
        };
        let events = stream(store.clone(), hub, spec, Duration::from_secs(60));
        futures::pin_mut!(events);
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..2_500 {
            let r = events.next().await.expect("an event").expect("no error");
            let ev = r.into_event().unwrap().unwrap();
            seen.insert(ev.channel);
            // pages of 1,000: page n+1 is read only once page n is taken
            let pages = store.lists.load(Ordering::SeqCst);
            assert_eq!(pages, i / SNAPSHOT_PAGE as usize + 1, "after {} events", i + 1);
        }
        assert_eq!(seen.len(), 2_500);
        assert_eq!(store.lists.load(Ordering::SeqCst), 3);
    }
}
