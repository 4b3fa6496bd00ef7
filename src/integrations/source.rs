//! The source: one replica per event shard at a time (a lease in the
//! store) hands that shard's changes to the store's enqueue step; every
//! other replica keeps the shard's recent changes (the last
//! [`BUFFER_WINDOW`], at most [`limits::SOURCE_BUFFER`] over all shards).
//! When an owner dies its lease runs out, another replica takes the shard
//! and offers what it kept; the store skips every change at or before the
//! shard's high-water mark, so each change is enqueued exactly once and no
//! single replica's death loses one. One owner per shard keeps the store's
//! cost per change the same however many replicas run.
//!
//! The feed calls [`Source::publish`] on its reader and must not wait, so
//! changes go into an unbounded channel whose length the source bounds
//! itself ([`limits::SOURCE_BUFFER`]); a task takes them in shard order and
//! calls the store, in chunks that never split one log entry (the store
//! compares whole entries' positions with its mark).
//!
//! When the store falls that far behind, later changes are coalesced
//! instead: the source keeps the latest change of each channel (in
//! arrival order) and hands them over once the channel is empty. Every
//! change carries its channel's full metrics, so a skipped intermediate
//! state costs one event and no correctness: each channel's last state,
//! a vacated one included, still reaches every rule. Memory is then
//! bounded by the number of channels that change, not by the rate.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::limits;
use super::rule::Rule;
use super::store::{Enqueued, IntegrationStore, RuleRef, SourceEvent};
use crate::domain::{ChangeEvent, ChannelName};
use crate::fanout::Hub;
use crate::store::ChangeSink;

/// The replica's source of integration events.
#[derive(Debug)]
pub struct Source {
    tx: mpsc::UnboundedSender<ChangeEvent>,
    refresh_tx: mpsc::UnboundedSender<oneshot::Sender<()>>,
    queued: AtomicUsize,
    /// Set while at least one rule exists: only then does the source keep
    /// changes (and ask the feed to read).
    active: AtomicBool,
    gaps: AtomicUsize,
    /// Whether changes go to `overflow` (read without the lock first, so
    /// the common case takes no lock).
    overflowing: AtomicBool,
    overflow: Mutex<Overflow>,
    /// Woken when the overflow starts (the task may be waiting on an
    /// empty channel).
    overflowed: Notify,
    coalesced: AtomicUsize,
}

/// Changes that came while the channel held [`limits::SOURCE_BUFFER`]: the
/// latest of each channel, numbered in arrival order (which is log order
/// within a shard, the order the store needs).
#[derive(Debug, Default)]
struct Overflow {
    on: bool,
    next: u64,
    latest: HashMap<ChannelName, (u64, ChangeEvent)>,
}

impl Source {
    /// A change from the feed. Never waits.
    pub fn publish(&self, e: &ChangeEvent) {
        if !self.active.load(Ordering::Relaxed) {
            return;
        }
        if self.overflowing.load(Ordering::Relaxed) || self.queued.load(Ordering::Relaxed) >= limits::SOURCE_BUFFER {
            let mut o = crate::sync::lock(&self.overflow);
            // checked again under the lock: the task may have just taken
            // the overflow, and then the channel is the place again
            if o.on || self.queued.load(Ordering::Relaxed) >= limits::SOURCE_BUFFER {
                if !o.on {
                    o.on = true;
                    self.overflowing.store(true, Ordering::Relaxed);
                    self.overflowed.notify_one();
                }
                o.next += 1;
                let n = o.next;
                if o.latest.insert(e.channel.clone(), (n, e.clone())).is_some() {
                    self.coalesced.fetch_add(1, Ordering::Relaxed);
                    super::metrics::metrics().coalesced();
                }
                return;
            }
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        // the receiver lives as long as the source's task; after shutdown
        // there is nobody to enqueue for
        let _sent = self.tx.send(e.clone());
    }

    /// The feed may have missed changes (its log was trimmed past it or
    /// lost): the next change of each channel carries its full metrics, so
    /// deliveries are right again from there; counted as a gap.
    pub fn resync(&self) {
        if self.active.load(Ordering::Relaxed) {
            self.gaps.fetch_add(1, Ordering::Relaxed);
            super::metrics::metrics().gap();
            warn!("integration source: the event feed may have missed changes");
        }
    }

    /// Makes the source read the rules now and waits until it has (and,
    /// when rules exist, until the feed reads every shard again): a rule
    /// created through this replica gets every change from the moment the
    /// call that created it answers. Bounded by [`REFRESH_WAIT`].
    pub async fn refresh(&self) {
        let (ack, done) = oneshot::channel();
        if self.refresh_tx.send(ack).is_ok() {
            // a source that is shutting down answers nothing
            let _answered = tokio::time::timeout(REFRESH_WAIT, done).await;
        }
    }

    /// Times changes were dropped or may have been missed.
    pub fn gaps(&self) -> usize {
        self.gaps.load(Ordering::Relaxed)
    }

    /// Changes replaced by a later change of their channel while the
    /// store was behind.
    pub fn coalesced(&self) -> usize {
        self.coalesced.load(Ordering::Relaxed)
    }

    /// The overflow's changes in arrival order, ending the overflow; empty
    /// when there is none.
    fn take_overflow(&self) -> Vec<ChangeEvent> {
        let mut o = crate::sync::lock(&self.overflow);
        o.on = false;
        o.next = 0;
        self.overflowing.store(false, Ordering::Relaxed);
        let mut events: Vec<(u64, ChangeEvent)> = o.latest.drain().map(|(_, v)| v).collect();
        drop(o);
        events.sort_unstable_by_key(|(n, _)| *n);
        events.into_iter().map(|(_, e)| e).collect()
    }
}

/// Starts the source: returns it (for the feed) and runs its task until
/// `cancel`.
/// `hub`'s demand keeps the feed reading while rules exist; `queued` is woken after entries were enqueued (local delivery workers
/// read at once instead of at their next poll).
pub fn start(
    store: Arc<dyn IntegrationStore>,
    demand: Option<Arc<Hub>>,
    shards: u32,
    queued: Arc<Notify>,
    cancel: CancellationToken,
) -> Arc<Source> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (refresh_tx, refresh_rx) = mpsc::unbounded_channel();
    let source = Arc::new(Source {
        tx,
        refresh_tx,
        queued: AtomicUsize::new(0),
        active: AtomicBool::new(false),
        gaps: AtomicUsize::new(0),
        overflowing: AtomicBool::new(false),
        overflow: Mutex::new(Overflow::default()),
        overflowed: Notify::new(),
        coalesced: AtomicUsize::new(0),
    });
    let task = Task {
        store,
        demand,
        source: source.clone(),
        queued,
        version: None,
        refs: Vec::new(),
        rules: Vec::new(),
        known: Vec::new(),
        listening: false,
        holder: format!("{:016x}", rand::random::<u64>()),
        shards: (0..shards.max(1)).map(|_| Shard::default()).collect(),
    };
    tokio::spawn(task.run(rx, refresh_rx, cancel));
    source
}

struct Task {
    store: Arc<dyn IntegrationStore>,
    demand: Option<Arc<Hub>>,
    source: Arc<Source>,
    queued: Arc<Notify>,
    version: Option<u64>,
    refs: Vec<RuleRef>,
    rules: Vec<Rule>,
    /// Every rule as last read, paused ones too (to restore them).
    known: Vec<Rule>,
    listening: bool,
    /// This replica's name in shard leases.
    holder: String,
    shards: Vec<Shard>,
}

/// This replica's view of one event shard.
#[derive(Debug, Default)]
struct Shard {
    /// Whether this replica holds the shard's lease (and enqueues it).
    owned: bool,
    /// The shard's recent changes while another replica owns it, with
    /// when they arrived.
    kept: VecDeque<(Instant, ChangeEvent)>,
    /// The first changes of a log entry whose last change has not arrived
    /// yet: the store compares whole entries' positions with its mark, so
    /// an entry must reach it whole.
    partial: Vec<ChangeEvent>,
}

/// How long a shard's owner holds it without renewing: the longest its
/// death delays the shard's events.
pub const SHARD_LEASE_TTL: Duration = Duration::from_secs(5);

/// How long other replicas keep a shard's changes: well past the time a
/// dead owner's lease takes to run out and be taken.
pub const BUFFER_WINDOW: Duration = Duration::from_secs(15);

/// The lease name of shard `shard` (beside the rules' delivery leases).
fn shard_lease(shard: usize) -> String {
    format!("source:{shard}")
}

/// How often the source looks for rule changes made on other replicas
/// (a change that matters to an enqueue is caught by the version check at
/// once; this only starts and stops the source).
const RULES_POLL: Duration = Duration::from_secs(1);

/// Longest wait of [`Source::refresh`].
pub const REFRESH_WAIT: Duration = Duration::from_secs(5);

impl Task {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<ChangeEvent>,
        mut refresh: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
        cancel: CancellationToken,
    ) {
        let mut poll = tokio::time::interval(RULES_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf: Vec<ChangeEvent> = Vec::new();
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = poll.tick() => {
                    self.reload().await;
                    self.hold_shards(&cancel).await;
                }
                Some(ack) = refresh.recv() => {
                    self.reload().await;
                    self.hold_shards(&cancel).await;
                    if self.listening {
                        if let Some(d) = self.demand.as_deref().and_then(ChangeSink::demand) {
                            // until the feed reads every shard again
                            let _ready = tokio::time::timeout(REFRESH_WAIT, d.ready()).await;
                        }
                    }
                    let _told = ack.send(());
                }
                n = rx.recv_many(&mut buf, limits::SOURCE_BUFFER) => {
                    if n == 0 {
                        break;
                    }
                    self.source.queued.fetch_sub(n, Ordering::Relaxed);
                    let events = std::mem::take(&mut buf);
                    self.handle(events, &cancel).await;
                    self.handle_overflow(&rx, &cancel).await;
                }
                () = self.source.overflowed.notified() => self.handle_overflow(&rx, &cancel).await,
            }
        }
        self.listen(false);
        self.release_shards().await;
    }

    /// Takes or renews every shard's lease while rules exist (offering the
    /// changes kept of a shard just taken), and gives them up otherwise.
    async fn hold_shards(&mut self, cancel: &CancellationToken) {
        if !self.listening {
            self.release_shards().await;
            return;
        }
        for i in 0..self.shards.len() {
            match self.store.lease(&shard_lease(i), &self.holder, SHARD_LEASE_TTL).await {
                Ok(true) if !self.shards[i].owned => {
                    self.shards[i].owned = true;
                    info!(shard = i, holder = %self.holder, "integration source: enqueuing shard");
                    let kept: Vec<ChangeEvent> = self.shards[i].kept.drain(..).map(|(_, e)| e).collect();
                    if !kept.is_empty() {
                        debug!(shard = i, changes = kept.len(), "integration source: took a shard over");
                    }
                    self.enqueue_all(i as u32, &kept, cancel).await;
                }
                Ok(true) => {}
                Ok(false) => self.shards[i].owned = false,
                // the store is down: whoever owns the shard cannot enqueue
                // either; keep the state until it answers
                Err(e) => debug!(shard = i, cause = %e, "integration source: cannot renew a shard lease"),
            }
        }
    }

    async fn release_shards(&mut self) {
        for i in 0..self.shards.len() {
            self.shards[i].kept.clear();
            if std::mem::take(&mut self.shards[i].owned) {
                if let Err(e) = self.store.release(&shard_lease(i), &self.holder).await {
                    debug!(shard = i, cause = %e, "integration source: cannot release a shard lease");
                }
            }
        }
    }

    fn listen(&mut self, on: bool) {
        if on == self.listening {
            return;
        }
        self.listening = on;
        if let Some(d) = self.demand.as_deref().and_then(ChangeSink::demand) {
            if on {
                d.listen();
            } else {
                d.unlisten();
            }
        }
    }

    /// Reads the rules; returns whether that worked.
    async fn reload(&mut self) -> bool {
        match self.store.rules().await {
            Ok((0, rules)) if rules.is_empty() && !self.known.is_empty() => {
                // the version counter is gone while rules were known: the
                // store lost its data (a Redis restarted empty), not a
                // deletion (which counts up). Put the rules back, so
                // deliveries resume; their queued events are lost with it.
                warn!(
                    rules = self.known.len(),
                    "integration rules lost by the store; restoring them"
                );
                for r in self.known.clone() {
                    if let Err(e) = self.store.put_rule(&r, true).await {
                        debug!(rule = %r.id, cause = %e, "integration source: cannot restore a rule");
                        return false;
                    }
                }
                Box::pin(self.reload()).await
            }
            Ok((version, rules)) => {
                self.version = Some(version);
                self.known = rules.clone();
                // active while any rule exists, paused ones too: the
                // store's last metrics per channel must stay current for
                // when they resume
                let any = !rules.is_empty();
                self.rules = rules.into_iter().filter(|r| !r.paused).collect();
                self.refs = self
                    .rules
                    .iter()
                    .map(|r| RuleRef {
                        id: r.id.clone(),
                        wants: r.want_bits(),
                        categories: r.category_bits(),
                    })
                    .collect();
                if self.source.active.swap(any, Ordering::Relaxed) != any {
                    info!(
                        active = any,
                        "integration source: {}",
                        if any { "following changes" } else { "idle: no rules" }
                    );
                }
                self.listen(any);
                true
            }
            Err(e) => {
                debug!(cause = %e, "integration source: cannot read rules");
                false
            }
        }
    }

    /// Once the channel is empty, the changes that overflowed it: they are
    /// newer than everything it held.
    async fn handle_overflow(&mut self, rx: &mpsc::UnboundedReceiver<ChangeEvent>, cancel: &CancellationToken) {
        if !rx.is_empty() || !self.source.overflowing.load(Ordering::Relaxed) {
            return;
        }
        let events = self.source.take_overflow();
        if !events.is_empty() {
            debug!(
                changes = events.len(),
                "integration source: caught up on coalesced changes"
            );
            self.handle(events, cancel).await;
        }
    }

    async fn handle(&mut self, events: Vec<ChangeEvent>, cancel: &CancellationToken) {
        let mut by_shard: BTreeMap<u32, Vec<ChangeEvent>> = BTreeMap::new();
        for e in events {
            by_shard.entry(e.shard).or_default().push(e);
        }
        let now = Instant::now();
        let cap = (limits::SOURCE_BUFFER / self.shards.len().max(1)).max(1);
        for (shard, mut events) in by_shard {
            let Some(state) = self.shards.get_mut(shard as usize) else {
                continue;
            };
            if !state.partial.is_empty() {
                let mut whole = std::mem::take(&mut state.partial);
                whole.append(&mut events);
                events = whole;
            }
            // changes after the last one that ends its entry wait for the
            // rest of their entry
            let complete = events.iter().rposition(|e| e.covers == e.pos).map_or(0, |i| i + 1);
            state.partial = events.split_off(complete);
            if events.is_empty() {
                continue;
            }
            if state.owned {
                self.enqueue_all(shard, &events, cancel).await;
                continue;
            }
            // another replica owns the shard: keep what a takeover needs
            state.kept.extend(events.into_iter().map(|e| (now, e)));
            while state.kept.len() > cap || state.kept.front().is_some_and(|(t, _)| t.elapsed() > BUFFER_WINDOW) {
                state.kept.pop_front();
            }
        }
    }

    /// Enqueues `events` of `shard` in chunks that never split a log entry.
    async fn enqueue_all(&mut self, shard: u32, events: &[ChangeEvent], cancel: &CancellationToken) {
        let mut start = 0;
        while start < events.len() {
            // end the chunk at a whole log entry
            let mut end = (start + limits::ENQUEUE_BATCH).min(events.len());
            while end < events.len() && events[end - 1].covers != events[end - 1].pos {
                end += 1;
            }
            self.enqueue(shard, &events[start..end], cancel).await;
            start = end;
        }
    }

    async fn enqueue(&mut self, shard: u32, events: &[ChangeEvent], cancel: &CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        for attempt in 0.. {
            if self.version.is_none() && !self.reload().await {
                if !self.wait(&mut backoff, cancel).await {
                    return;
                }
                continue;
            }
            let Some(version) = self.version else { continue };
            let batch: Vec<SourceEvent> = events
                .iter()
                .map(|e| SourceEvent {
                    pos: e.pos,
                    channel: e.channel.as_str().to_string(),
                    metrics: e.metrics,
                    timestamp_ms: e.timestamp_ms,
                    rules: self
                        .rules
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| r.covers(e.channel.as_str()))
                        .map(|(i, _)| i as u16)
                        .collect(),
                })
                .collect();
            match self.store.enqueue(version, shard, &self.refs, &batch).await {
                Ok(Enqueued::Done { entries }) => {
                    if entries > 0 {
                        super::metrics::metrics().enqueued(entries);
                        self.queued.notify_waiters();
                    }
                    return;
                }
                Ok(Enqueued::Stale) => {
                    self.version = None;
                }
                Err(e) => {
                    if attempt % 20 == 0 {
                        warn!(cause = %e, "integration source: cannot enqueue; retrying");
                    }
                    if !self.wait(&mut backoff, cancel).await {
                        return;
                    }
                }
            }
        }
    }

    async fn wait(&self, backoff: &mut Duration, cancel: &CancellationToken) -> bool {
        tokio::select! {
            () = cancel.cancelled() => false,
            () = tokio::time::sleep(*backoff) => {
                *backoff = (*backoff * 2).min(Duration::from_secs(2));
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Metrics, Pos};
    use crate::integrations::rule::RuleSpec;
    use crate::integrations::store::MemoryIntegrations;

    fn change(n: u64, channel: &str, connections: u32) -> ChangeEvent {
        let pos = Pos { ms: 1, seq: n };
        ChangeEvent {
            shard: 0,
            pos,
            covers: pos,
            channel: ChannelName::parse("channel", channel).unwrap(),
            metrics: Metrics {
                connections,
                ..Metrics::default()
            },
            timestamp_ms: 1,
        }
    }

    /// More changes than the source queues arrive while its task cannot
    /// run (the store is behind): the changes past the queue are coalesced
    /// per channel, so every channel's last state is enqueued, the one
    /// that vacates a channel included, and nothing counts as a gap.
    #[tokio::test]
    async fn past_the_queue_each_channels_last_change_still_reaches_the_rules() {
        let store = Arc::new(MemoryIntegrations::new());
        let rule = Rule::create(
            RuleSpec {
                target: Some("http://127.0.0.1:9/hook".into()),
                events: Some(vec!["channel.occupancy".into()]),
                ..RuleSpec::default()
            },
            1,
        )
        .unwrap();
        store.put_rule(&rule, true).await.unwrap();
        let queued = Arc::new(Notify::new());
        let cancel = CancellationToken::new();
        let source = start(store.clone(), None, 1, queued.clone(), cancel.clone());
        source.refresh().await;
        // one stretch without an await: on this test's one thread the
        // source's task cannot take anything meanwhile
        let mut n = 0;
        let mut next = |ch: &str, c: u32| {
            n += 1;
            change(n, ch, c)
        };
        source.publish(&next("gone", 1));
        for i in 0..limits::SOURCE_BUFFER {
            source.publish(&next(&format!("busy:{}", i % 50), 1 + (i % 7) as u32));
        }
        // past the queue: these must not be lost
        for round in 1..=3u32 {
            source.publish(&next("late", round));
        }
        source.publish(&next("gone", 0));
        let want: BTreeMap<&str, u32> = [("gone", 0), ("late", 3)].into();
        let mut last = BTreeMap::new();
        for _ in 0..600 {
            let woken = queued.notified();
            last.clear();
            for e in store.read(&rule.id, None, 1_000_000).await.unwrap() {
                last.insert(e.channel.clone(), e.metrics.connections);
            }
            if want.iter().all(|(ch, c)| last.get(*ch) == Some(c)) {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), woken).await;
        }
        for (ch, c) in &want {
            assert_eq!(last.get(*ch), Some(c), "the last change of {ch} reached the queue");
        }
        assert_eq!(source.gaps(), 0, "nothing was lost");
        assert_eq!(
            source.coalesced(),
            2,
            "late's first two changes were replaced by its third"
        );
        cancel.cancel();
    }
}
