//! The replica's event hub: receives every committed change from the
//! store's feed (one reader per event shard) and drops it into the inbox of
//! each local subscription that follows the channel.
//!
//! An inbox queues events in order while its subscriber keeps up and keeps
//! only the newest per channel once it falls behind, so a subscriber that
//! stops reading costs a bounded amount of memory however many changes
//! happen, and the hub never waits for a subscriber. Events are full
//! snapshots, so keeping only the newest loses nothing a subscriber needs.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio::sync::{watch, Notify};

use super::demand::Demand;
use super::wire;
use crate::domain::events::EVENT_NAME;
use crate::domain::{ChangeEvent, ChannelName, Metrics, Pos};
use crate::proto::v1 as pb;
use crate::store::ChangeSink;

/// A change as subscribers receive it, with its body encoded once.
#[derive(Debug)]
pub struct HubEvent {
    /// Log shard.
    pub shard: u32,
    /// Position in the shard's log.
    pub pos: Pos,
    /// The channel.
    pub channel: ChannelName,
    /// Metrics after the change.
    pub metrics: Metrics,
    /// Encoded `OccupancyEvent` without its id (see [`wire`]).
    pub body: Bytes,
}

impl HubEvent {
    /// Builds the event and encodes its shared body.
    pub fn new(shard: u32, pos: Pos, channel: ChannelName, metrics: Metrics, timestamp_ms: i64) -> Self {
        let body = wire::shared_body(&pb::OccupancyEvent {
            id: String::new(),
            name: EVENT_NAME.to_string(),
            channel: channel.as_str().to_string(),
            timestamp_ms,
            metrics: Some(metrics.into()),
        });
        Self {
            shard,
            pos,
            channel,
            metrics,
            body,
        }
    }
}

pub use crate::domain::limits::INBOX_QUEUE;

#[derive(Debug, Default)]
struct Pending {
    /// Events in arrival order, while the subscriber keeps up.
    queue: VecDeque<Arc<HubEvent>>,
    /// Newest event per channel once the queue is full. Every event here is
    /// newer than any queued event of the same channel.
    overflow: HashMap<ChannelName, Arc<HubEvent>>,
}

/// A subscription's undelivered events: every event in order while the
/// subscriber keeps up, then only the newest per channel, so its size is
/// bounded by [`INBOX_QUEUE`] plus the number of followed channels.
#[derive(Debug, Default)]
pub struct Inbox {
    id: u64,
    pending: Mutex<Pending>,
    /// Woken when an event arrives.
    pub notify: Notify,
}

impl Inbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        crate::sync::lock(&self.pending)
    }

    /// Takes everything waiting, in an order that keeps each channel's
    /// events in log order.
    pub fn take(&self) -> Vec<Arc<HubEvent>> {
        let mut out = Vec::new();
        self.take_into(&mut out);
        out
    }

    /// Like [`Inbox::take`], appending to `out` (so its allocation can be
    /// reused from one call to the next).
    pub fn take_into(&self, out: &mut Vec<Arc<HubEvent>>) {
        let mut p = self.lock();
        out.extend(p.queue.drain(..));
        if !p.overflow.is_empty() {
            out.extend(p.overflow.drain().map(|(_, e)| e));
        }
    }

    fn put(&self, e: &Arc<HubEvent>) {
        let mut p = self.lock();
        if p.overflow.is_empty() && p.queue.len() < INBOX_QUEUE {
            p.queue.push_back(e.clone());
        } else {
            p.overflow.insert(e.channel.clone(), e.clone());
        }
        drop(p);
        self.notify.notify_one();
    }

    /// Number of events waiting (for tests and gauges).
    pub fn len(&self) -> usize {
        let p = self.lock();
        p.queue.len() + p.overflow.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Default)]
struct Registry {
    by_channel: HashMap<ChannelName, Vec<Arc<Inbox>>>,
    by_prefix: HashMap<String, Vec<Arc<Inbox>>>,
    longest_prefix: usize,
}

/// Routes committed changes to local subscriptions.
pub struct Hub {
    registry: RwLock<Registry>,
    /// Per shard, the position of the last change dispatched.
    watermark: Mutex<Vec<Pos>>,
    resync: watch::Sender<u64>,
    next_id: AtomicU64,
    published: AtomicU64,
    /// Registrations, for the feed to pause on when there are none.
    demand: Demand,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("shards", &self.shards()).finish()
    }
}

/// A subscription's place in the hub; leaving it (drop) unregisters.
pub struct Registration {
    hub: Arc<Hub>,
    /// The subscription's inbox.
    pub inbox: Arc<Inbox>,
    channels: Vec<ChannelName>,
    prefix: Option<String>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(self);
    }
}

impl Hub {
    /// A hub for a store with `shards` event shards.
    pub fn new(shards: u32) -> Arc<Self> {
        Arc::new(Self {
            registry: RwLock::new(Registry::default()),
            watermark: Mutex::new(vec![Pos::ZERO; shards as usize]),
            resync: watch::channel(0).0,
            next_id: AtomicU64::new(1),
            published: AtomicU64::new(0),
            demand: Demand::new(shards),
        })
    }

    /// Number of event shards.
    pub fn shards(&self) -> u32 {
        self.watermark_lock().len() as u32
    }

    fn watermark_lock(&self) -> std::sync::MutexGuard<'_, Vec<Pos>> {
        crate::sync::lock(&self.watermark)
    }

    /// Changes published so far (for tests and gauges).
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Per shard, the position of the last change dispatched, into `out`
    /// (replacing its contents, reusing its allocation). Every change up to
    /// it is already in the inboxes that follow its channel.
    pub fn watermark_into(&self, out: &mut Vec<Pos>) {
        out.clear();
        out.extend_from_slice(&self.watermark_lock());
    }

    /// Signals raised when every subscription should take a new snapshot.
    pub fn resyncs(&self) -> watch::Receiver<u64> {
        self.resync.subscribe()
    }

    /// Registers a subscription to `channels` and to names under `prefix`.
    /// Before reading its snapshot, the subscription must wait for
    /// [`Hub::ready`].
    pub fn register(self: &Arc<Self>, channels: &[ChannelName], prefix: Option<&str>) -> Registration {
        let inbox = Arc::new(Inbox {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            ..Default::default()
        });
        let mut channels = channels.to_vec();
        channels.sort();
        channels.dedup();
        {
            let mut r = crate::sync::write(&self.registry);
            for c in &channels {
                r.by_channel.entry(c.clone()).or_default().push(inbox.clone());
            }
            if let Some(p) = prefix {
                r.by_prefix.entry(p.to_string()).or_default().push(inbox.clone());
                r.longest_prefix = r.longest_prefix.max(p.len());
            }
        }
        self.demand.listen();
        Registration {
            hub: self.clone(),
            inbox,
            channels,
            prefix: prefix.map(str::to_string),
        }
    }

    /// Waits until the feed reads every shard, so every change from now on
    /// reaches the registered inboxes (a replica with no subscription stops
    /// reading the log; see [`Demand`]).
    pub async fn ready(&self) {
        self.demand.ready().await;
    }

    /// Event shards whose reader is paused for want of subscriptions.
    pub fn paused_shards(&self) -> usize {
        self.demand.paused()
    }

    fn unregister(&self, reg: &Registration) {
        self.demand.unlisten();
        let mut r = crate::sync::write(&self.registry);
        let id = reg.inbox.id;
        for c in &reg.channels {
            if let Some(v) = r.by_channel.get_mut(c) {
                v.retain(|i| i.id != id);
                if v.is_empty() {
                    r.by_channel.remove(c);
                }
            }
        }
        if let Some(p) = &reg.prefix {
            if let Some(v) = r.by_prefix.get_mut(p) {
                v.retain(|i| i.id != id);
                if v.is_empty() {
                    r.by_prefix.remove(p);
                    r.longest_prefix = r.by_prefix.keys().map(String::len).max().unwrap_or(0);
                }
            }
        }
    }

    /// Every open subscription's inbox, once each.
    fn inboxes(&self) -> Vec<Arc<Inbox>> {
        let r = crate::sync::read(&self.registry);
        let mut seen = std::collections::HashSet::new();
        r.by_channel
            .values()
            .chain(r.by_prefix.values())
            .flatten()
            .filter(|i| seen.insert(i.id))
            .cloned()
            .collect()
    }

    /// Events waiting in all inboxes (for tests and gauges).
    pub fn pending(&self) -> usize {
        self.inboxes().iter().map(|i| i.len()).sum()
    }

    /// Number of open subscriptions (for gauges).
    pub fn subscriptions(&self) -> usize {
        self.inboxes().len()
    }

    /// Number of registered subscriptions' channel and prefix entries.
    pub fn registrations(&self) -> usize {
        let r = crate::sync::read(&self.registry);
        r.by_channel.values().map(Vec::len).sum::<usize>() + r.by_prefix.values().map(Vec::len).sum::<usize>()
    }
}

impl ChangeSink for Hub {
    fn publish(&self, e: ChangeEvent) {
        self.published.fetch_add(1, Ordering::Relaxed);
        let shard = e.shard as usize;
        let pos = e.covers;
        {
            let r = crate::sync::read(&self.registry);
            let name = e.channel.as_str();
            let mut targets: Vec<&Arc<Inbox>> = Vec::new();
            if let Some(v) = r.by_channel.get(&e.channel) {
                targets.extend(v.iter());
            }
            if !r.by_prefix.is_empty() {
                // subscriptions to every channel (the empty prefix)
                if let Some(v) = r.by_prefix.get("") {
                    targets.extend(v.iter());
                }
                // every prefix of the name, at character boundaries: the
                // cost depends on the name, not on the number of prefixes
                let limit = r.longest_prefix.min(name.len());
                // (the empty prefix, which follows every channel, included)
                for (i, _) in name.char_indices().chain(std::iter::once((name.len(), ' '))) {
                    if i > limit {
                        break;
                    }
                    if let Some(v) = r.by_prefix.get(&name[..i]) {
                        targets.extend(v.iter());
                    }
                }
            }
            if !targets.is_empty() {
                let ev = Arc::new(HubEvent::new(
                    e.shard,
                    e.pos,
                    e.channel.clone(),
                    e.metrics,
                    e.timestamp_ms,
                ));
                for inbox in targets {
                    inbox.put(&ev);
                }
            }
        }
        if let Some(w) = self.watermark_lock().get_mut(shard) {
            if pos > *w {
                *w = pos;
            }
        }
    }

    fn resync(&self) {
        for w in self.watermark_lock().iter_mut() {
            *w = Pos::ZERO;
        }
        self.resync.send_modify(|g| *g += 1);
    }

    fn demand(&self) -> Option<&Demand> {
        Some(&self.demand)
    }
}
