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
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::hub::{Hub, HubEvent, Registration};
use super::wire::{Encoder, SubscribeOccupancyResponse};
use crate::domain::events::{wall_ms, ResumeToken};
use crate::domain::{Category, ChannelName, Metrics, Pos};
use crate::error::Error;
use crate::store::Store;

mod filter;
mod snapshot;

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
    /// Per shard, up to where the client holds every channel's state
    /// without this stream having read it: a resume's token (empty
    /// otherwise, and after a resync, whose log may number anew). A
    /// change at or before it that the hub delivers late is not sent again.
    floor: Vec<Pos>,
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
            floor: Vec::new(),
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use futures::StreamExt;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::domain::limits::SNAPSHOT_PAGE;
    use crate::domain::ListQuery;
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
        async fn keep_alive_opening(
            &self,
            s: &SessionId,
            owner: &str,
            ttl: Option<u64>,
            open_epoch: u64,
        ) -> Result<KeepAliveOutcome> {
            self.inner.keep_alive_opening(s, owner, ttl, open_epoch).await
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

    /// Keeps every change a store publishes.
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<crate::domain::ChangeEvent>>);

    impl ChangeSink for Recorder {
        fn publish(&self, event: crate::domain::ChangeEvent) {
            self.0.lock().unwrap().push(event);
        }
        fn resync(&self) {}
    }

    /// A change the client already holds (it is before the resume token)
    /// that reaches the hub only after the resumed stream is live, from a
    /// log reader running behind, is not sent again: the next message is
    /// the next change.
    #[tokio::test]
    async fn a_late_change_from_before_the_resume_point_is_not_sent_again() {
        let store = Arc::new(MemoryStore::new(Duration::from_secs(60)));
        let changes = Arc::new(Recorder::default());
        store.feed(changes.clone(), CancellationToken::new());
        let session = SessionId::parse("s", "fe").unwrap();
        let room = ChannelName::parse("ch", "room").unwrap();
        let attach = |c: &str| Operation::Attach {
            connection: ConnectionId::parse("c", c).unwrap(),
            channel: room.clone(),
            modes: ModeSet::EMPTY,
        };
        store.apply(&session, &[attach("c1")], false).await.unwrap();
        let old = changes.0.lock().unwrap().pop().expect("the first attach's change");
        let token = ResumeToken {
            positions: store.snapshot(&[]).await.unwrap().positions,
        };
        // the hub is fed by hand: the first attach's change arrives late
        let hub = Hub::new(store.shards());
        let spec = Spec {
            channels: vec![room.clone()],
            prefix: None,
            categories: vec![],
            debounce: Duration::ZERO,
            resume: Some(token),
        };
        let events = stream(store.clone(), hub.clone(), spec, Duration::from_secs(600));
        futures::pin_mut!(events);
        let first = events.next().await.expect("a message").expect("no error");
        assert!(first.live.is_some(), "nothing changed since the token: {first:?}");
        hub.publish(old);
        store.apply(&session, &[attach("c2")], false).await.unwrap();
        let new = changes.0.lock().unwrap().pop().expect("the second attach's change");
        hub.publish(new);
        let next = events.next().await.expect("a message").expect("no error");
        let ev = next.into_event().unwrap().expect("an event");
        assert_eq!(
            ev.metrics.expect("metrics").connections,
            2,
            "the late change was sent again"
        );
    }

    /// A channel created while a first snapshot under a prefix is read a
    /// page at a time, sorting into a page already read, still reaches the
    /// subscriber (its change is older than the last page's positions).
    #[tokio::test]
    async fn a_channel_created_during_a_paged_snapshot_is_sent() {
        let store = Arc::new(MemoryStore::new(Duration::from_secs(60)));
        let session = SessionId::parse("s", "fe").unwrap();
        let attach = |i: &str| Operation::Attach {
            connection: ConnectionId::parse("c", format!("c{i}")).unwrap(),
            channel: ChannelName::parse("ch", format!("ch:{i}")).unwrap(),
            modes: ModeSet::EMPTY,
        };
        let ops: Vec<Operation> = (0..1_500).map(|i| attach(&format!("{i:04}"))).collect();
        store.apply(&session, &ops, false).await.unwrap();
        let hub = Hub::new(store.shards());
        store.feed(hub.clone(), CancellationToken::new());
        let spec = Spec {
            channels: vec![],
            prefix: Some("ch:".into()),
            categories: vec![],
            debounce: Duration::ZERO,
            resume: None,
        };
        let events = stream(store.clone(), hub, spec, Duration::from_secs(600));
        futures::pin_mut!(events);
        for _ in 0..SNAPSHOT_PAGE {
            let r = events.next().await.expect("an event").expect("no error");
            assert!(r.live.is_none());
        }
        // the second page is read at the next call
        store.apply(&session, &[attach("0000a")], false).await.unwrap();
        let mut sent = std::collections::BTreeSet::new();
        for _ in 0..1_000 {
            let r = events.next().await.expect("a message").expect("no error");
            if r.live.is_some() {
                break;
            }
            sent.insert(r.into_event().unwrap().expect("an event").channel);
        }
        assert!(sent.contains("ch:0000a"), "the new channel was not sent");
        assert_eq!(sent.len(), 501);
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
