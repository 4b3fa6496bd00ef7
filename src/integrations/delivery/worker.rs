//! The worker of one rule: reads its queue in order, keeps per channel
//! what is not yet sent, decides what is ready (vacated delay, debounce),
//! forms batches, stages them, and records deliveries; each request runs
//! in a [`super::send`] task.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::send::{Ended, Send};
use super::{LEASE_RENEW, LEASE_TTL, MAX_POLL, MIN_POLL};
use crate::domain::events::wall_ms;
use crate::domain::Pos;
use crate::integrations::limits;
use crate::integrations::payload;
use crate::integrations::rule::{Kind, Mode, Rule};
use crate::integrations::sender::Sender;
use crate::integrations::store::{Entry, IntegrationStore, Staged};

#[derive(Debug, Default)]
struct Chan {
    queue: VecDeque<Entry>,
    busy: bool,
    /// Commit time of the first occupancy event being coalesced.
    hold_since: Option<i64>,
}

pub(super) struct Worker {
    rule: Arc<Rule>,
    store: Arc<dyn IntegrationStore>,
    sender: Sender,
    holder: String,
    queued: Arc<Notify>,
    cancel: CancellationToken,
    chans: HashMap<String, Chan>,
    held: usize,
    cursor: Option<String>,
    staged_ids: HashSet<String>,
    resend: VecDeque<Staged>,
    inflight: usize,
    /// Batches in flight per channel: a channel is free again only when
    /// none is (a takeover may resend several of one channel's batches).
    flying: HashMap<String, usize>,
    /// First queue position of each batch in flight (a batch may complete
    /// by trimming only before all of them).
    firsts: BTreeMap<Pos, usize>,
    /// Delivered batches not yet recorded in the store.
    completions: VecDeque<Staged>,
    last_start: Option<Instant>,
    discards: Vec<String>,
    done_tx: mpsc::UnboundedSender<(Staged, Ended)>,
    done_rx: mpsc::UnboundedReceiver<(Staged, Ended)>,
}

impl Worker {
    pub(super) fn new(
        rule: Rule,
        store: Arc<dyn IntegrationStore>,
        sender: Sender,
        holder: String,
        queued: Arc<Notify>,
        cancel: CancellationToken,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Self {
            rule: Arc::new(rule),
            store,
            sender,
            holder,
            queued,
            cancel,
            chans: HashMap::new(),
            held: 0,
            cursor: None,
            staged_ids: HashSet::new(),
            resend: VecDeque::new(),
            inflight: 0,
            flying: HashMap::new(),
            firsts: BTreeMap::new(),
            completions: VecDeque::new(),
            last_start: None,
            discards: Vec::new(),
            done_tx,
            done_rx,
        }
    }

    fn concurrency(&self) -> usize {
        match self.rule.mode {
            Mode::Single => self.rule.concurrency as usize,
            Mode::Batched { .. } => 1,
        }
    }

    pub(super) async fn run(mut self) {
        // first what a previous holder staged, with the same ids
        loop {
            match self.store.staged(&self.rule.id).await {
                Ok(staged) => {
                    for b in staged {
                        for e in &b.entries {
                            self.staged_ids.insert(e.id.clone());
                            self.chans.entry(e.channel.clone()).or_default().busy = true;
                        }
                        self.resend.push_back(b);
                    }
                    break;
                }
                Err(e) => {
                    debug!(rule = %self.rule.id, cause = %e, "integration delivery: cannot read staged batches");
                    if !self.pause(Duration::from_millis(200)).await {
                        return;
                    }
                }
            }
        }
        let mut renew = tokio::time::interval(LEASE_RENEW);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut poll = MIN_POLL;
        loop {
            let read_any = self.read().await;
            poll = if read_any { MIN_POLL } else { (poll * 2).min(MAX_POLL) };
            let due = self.dispatch().await;
            self.flush_discards().await;
            self.record_completions().await;
            let wait = due.map_or(poll, |d| d.min(poll));
            tokio::select! {
                () = self.cancel.cancelled() => break,
                Some((batch, ended)) = self.done_rx.recv() => self.settle(&batch, ended),
                () = self.queued.notified() => {}
                () = tokio::time::sleep(wait) => {}
                _ = renew.tick() => {
                    match self.store.lease(&self.rule.id, &self.holder, LEASE_TTL).await {
                        Ok(true) => {}
                        Ok(false) => {
                            warn!(rule = %self.rule.id, "integration delivery: lease taken by another replica");
                            break;
                        }
                        // the store is down: nobody else can take it either
                        Err(e) => debug!(rule = %self.rule.id, cause = %e, "integration delivery: cannot renew lease"),
                    }
                }
            }
        }
        self.cancel.cancel();
        // the send tasks end on the same token; their batches stay staged
        while self.inflight > 0 {
            match self.done_rx.recv().await {
                Some((b, ended)) => self.settle(&b, ended),
                None => break,
            }
        }
        // delivered batches not yet recorded: once more, else the next
        // holder resends them under their ids
        self.record_completions().await;
        if let Err(e) = self.store.release(&self.rule.id, &self.holder).await {
            debug!(rule = %self.rule.id, cause = %e, "integration delivery: cannot release lease");
        }
    }

    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            () = self.cancel.cancelled() => false,
            () = tokio::time::sleep(d) => true,
        }
    }

    fn settle(&mut self, batch: &Staged, ended: Ended) {
        self.inflight = self.inflight.saturating_sub(1);
        self.track(batch, false);
        for ch in channels(batch) {
            if let Some(n) = self.flying.get_mut(&ch) {
                *n -= 1;
                if *n == 0 {
                    self.flying.remove(&ch);
                }
            }
        }
        match ended {
            Ended::Abandoned => return,
            Ended::Delivered => self.completions.push_back(batch.clone()),
            Ended::Settled => {}
        }
        for e in &batch.entries {
            // still busy while another of its batches flies or waits to be
            // resent: the next one must not overtake it
            let waiting = self.flying.contains_key(&e.channel)
                || self
                    .resend
                    .iter()
                    .any(|b| b.entries.iter().any(|r| r.channel == e.channel));
            if let Some(c) = self.chans.get_mut(&e.channel) {
                c.busy = waiting;
            }
        }
    }

    /// Counts a batch's first position in (or out of) [`Worker::firsts`].
    fn track(&mut self, batch: &Staged, add: bool) {
        let Some(first) = batch.entries.iter().map(Entry::pos).min() else {
            return;
        };
        if add {
            *self.firsts.entry(first).or_default() += 1;
        } else if let Some(n) = self.firsts.get_mut(&first) {
            *n -= 1;
            if *n == 0 {
                self.firsts.remove(&first);
            }
        }
    }

    /// Whether nothing before `batch`'s last entry waits: no entry held
    /// and no batch in flight or to be resent starts before it (entries
    /// read later come after it, and discarded ones may go too).
    fn at_front(&self, batch: &Staged) -> bool {
        let Some(last) = batch.entries.iter().map(Entry::pos).max() else {
            return false;
        };
        let held = self
            .chans
            .values()
            .filter_map(|c| c.queue.front())
            .map(Entry::pos)
            .min();
        let flying = self.firsts.keys().next().copied();
        let resent = self.resend.iter().flat_map(|b| &b.entries).map(Entry::pos).min();
        [held, flying, resent].into_iter().flatten().all(|p| last < p)
    }

    /// Records delivered batches in the store, oldest first; what fails
    /// is tried again next round (a takeover meanwhile resends it under
    /// the same id, which receivers drop).
    async fn record_completions(&mut self) {
        while let Some(batch) = self.completions.front() {
            let front = self.at_front(batch);
            match self.store.complete(&self.rule.id, batch, front).await {
                Ok(()) => {
                    self.completions.pop_front();
                }
                Err(e) => {
                    debug!(rule = %self.rule.id, cause = %e, "integration delivery: cannot record a delivery");
                    return;
                }
            }
        }
    }

    /// Reads newer entries while there is room: whether any came.
    async fn read(&mut self) -> bool {
        if self.held >= limits::WORKER_WINDOW {
            return false;
        }
        let room = limits::WORKER_WINDOW - self.held;
        match self
            .store
            .read(&self.rule.id, self.cursor.as_deref(), room.min(1_000))
            .await
        {
            Ok(entries) => {
                let any = !entries.is_empty();
                for e in entries {
                    self.cursor = Some(e.id.clone());
                    if self.staged_ids.remove(&e.id) {
                        continue;
                    }
                    self.held += 1;
                    self.chans.entry(e.channel.clone()).or_default().queue.push_back(e);
                }
                any
            }
            Err(e) => {
                debug!(rule = %self.rule.id, cause = %e, "integration delivery: cannot read queue");
                false
            }
        }
    }

    /// Drops what will not be sent from the front of a channel's queue and
    /// says how many entries are ready now, or when the next one is.
    fn ready(rule: &Rule, chan: &mut Chan, discards: &mut Vec<String>, now: i64) -> (usize, Option<i64>) {
        let mut i = 0;
        while i < chan.queue.len() {
            let head = &chan.queue[i];
            match head.kind {
                Kind::Occupied if !rule.wants(Kind::Occupied) => {
                    // kept only to cancel a waiting vacated event
                    if let Some(e) = chan.queue.remove(i) {
                        discards.push(e.id);
                    }
                }
                Kind::Occupancy if !head.flip && rule.debounce_ms > 0 => {
                    let since = *chan.hold_since.get_or_insert(head.timestamp_ms);
                    let newer = chan.queue.iter().skip(i + 1).any(|e| e.kind == Kind::Occupancy);
                    if newer {
                        if let Some(e) = chan.queue.remove(i) {
                            discards.push(e.id);
                        }
                        continue;
                    }
                    let due = since + rule.debounce_ms as i64;
                    if now < due {
                        return (i, Some(due));
                    }
                    i += 1;
                }
                Kind::Vacated if rule.vacated_delay_ms > 0 => {
                    let due = head.timestamp_ms + rule.vacated_delay_ms as i64;
                    let again = chan
                        .queue
                        .iter()
                        .enumerate()
                        .skip(i + 1)
                        .find(|(_, e)| e.kind == Kind::Occupied)
                        .map(|(j, e)| (j, e.timestamp_ms));
                    if let Some((j, at)) = again {
                        if at < due {
                            // re-occupied within the delay: neither is sent
                            for k in [j, i] {
                                if let Some(e) = chan.queue.remove(k) {
                                    discards.push(e.id);
                                }
                            }
                            continue;
                        }
                    }
                    if now < due {
                        return (i, Some(due));
                    }
                    i += 1;
                }
                _ => i += 1,
            }
        }
        (i, None)
    }

    fn take(&mut self, channel: &str, n: usize) -> Vec<Entry> {
        let Some(c) = self.chans.get_mut(channel) else {
            return Vec::new();
        };
        let out: Vec<Entry> = c.queue.drain(..n).collect();
        if out.iter().any(|e| e.kind == Kind::Occupancy) {
            c.hold_since = None;
        }
        self.held -= out.len();
        out
    }

    /// Starts what may start now; returns how long until something else may.
    async fn dispatch(&mut self) -> Option<Duration> {
        let now = wall_ms();
        let mut next: Option<i64> = None;
        // resends first, in order; one channel's one after another (a
        // previous holder may have staged the next of a channel before
        // recording the delivery of the one before)
        let mut blocked: HashSet<String> = HashSet::new();
        let mut i = 0;
        while i < self.resend.len() && self.inflight < self.concurrency() && self.batch_slot(&mut next) {
            let chans = channels(&self.resend[i]);
            if chans.iter().any(|c| blocked.contains(c) || self.flying.contains_key(c)) {
                blocked.extend(chans);
                i += 1;
                continue;
            }
            if let Some(b) = self.resend.remove(i) {
                self.spawn(b);
            }
        }
        if !self.resend.is_empty() {
            return Some(MIN_POLL);
        }
        // nothing can start: look again when a request ends or the
        // interval allows (a debounce or delay due meanwhile waits for it)
        let free = match self.rule.mode {
            Mode::Single => self.inflight < self.concurrency(),
            Mode::Batched { .. } => self.inflight == 0 && self.batch_slot(&mut next),
        };
        if !free {
            return next.map(|d| Duration::from_millis(u64::try_from(d - now).unwrap_or(0).max(1)));
        }
        // what each free channel has ready, oldest head first
        let mut ready: Vec<(Pos, String, usize)> = Vec::new();
        let rule = self.rule.clone();
        for (name, chan) in &mut self.chans {
            if chan.busy || chan.queue.is_empty() {
                continue;
            }
            let (n, due) = Self::ready(&rule, chan, &mut self.discards, now);
            if let Some(d) = due {
                next = Some(next.map_or(d, |x| x.min(d)));
            }
            if n > 0 {
                ready.push((chan.queue[0].pos(), name.clone(), n));
            }
        }
        self.held = self.chans.values().map(|c| c.queue.len()).sum();
        ready.sort_unstable_by_key(|(head, _, _)| *head);
        match self.rule.mode {
            Mode::Single => {
                for (_, name, _) in ready {
                    if self.inflight >= self.concurrency() {
                        break;
                    }
                    let entries = self.take(&name, 1);
                    self.start_batch(entries).await;
                }
            }
            Mode::Batched { max_events, .. } => {
                // the oldest ready entries over all channels, so that a
                // batch is usually the front of the queue and its removal
                // one trim
                let mut order: Vec<(Pos, usize)> = Vec::new();
                for (i, (_, name, n)) in ready.iter().enumerate() {
                    if let Some(c) = self.chans.get(name) {
                        order.extend(c.queue.iter().take(*n).map(|e| (e.pos(), i)));
                    }
                }
                order.sort_unstable();
                order.truncate(max_events as usize);
                let mut counts = vec![0usize; ready.len()];
                for (_, i) in &order {
                    counts[*i] += 1;
                }
                let mut entries = Vec::with_capacity(order.len());
                for ((_, name, _), n) in ready.iter().zip(counts) {
                    if n == 0 {
                        continue;
                    }
                    // a channel's first entries; it stays busy until the
                    // batch settles, so the rest cannot overtake them
                    entries.extend(self.take(name, n));
                    if let Some(c) = self.chans.get_mut(name) {
                        c.busy = true;
                    }
                }
                entries.sort_by_cached_key(Entry::pos);
                self.start_batch(entries).await;
            }
        }
        self.chans
            .retain(|_, c| c.busy || !c.queue.is_empty() || c.hold_since.is_some());
        next.map(|d| Duration::from_millis(u64::try_from(d - now).unwrap_or(0).max(1)))
    }

    /// Whether batched mode's interval lets a request start now (single
    /// mode: always); otherwise notes when it will.
    fn batch_slot(&self, next: &mut Option<i64>) -> bool {
        let Mode::Batched { interval_ms, .. } = self.rule.mode else {
            return true;
        };
        match self.last_start {
            Some(t) if t.elapsed() < Duration::from_millis(interval_ms) => {
                let left = Duration::from_millis(interval_ms) - t.elapsed();
                let at = wall_ms() + left.as_millis() as i64;
                *next = Some(next.map_or(at, |x| x.min(at)));
                false
            }
            _ => true,
        }
    }

    async fn start_batch(&mut self, entries: Vec<Entry>) {
        let Some(first) = entries.first() else { return };
        let batch = Staged {
            id: payload::batch_id(&self.rule.id, first),
            entries,
        };
        for e in &batch.entries {
            self.chans.entry(e.channel.clone()).or_default().busy = true;
        }
        if let Err(e) = self.store.stage(&self.rule.id, &batch).await {
            // not staged, not sent: back to the front of their channels
            debug!(rule = %self.rule.id, cause = %e, "integration delivery: cannot stage a batch");
            for e in batch.entries.into_iter().rev() {
                let c = self.chans.entry(e.channel.clone()).or_default();
                c.busy = false;
                c.queue.push_front(e);
                self.held += 1;
            }
            return;
        }
        self.spawn(batch);
    }

    fn spawn(&mut self, batch: Staged) {
        for e in &batch.entries {
            self.chans.entry(e.channel.clone()).or_default().busy = true;
        }
        self.track(&batch, true);
        for ch in channels(&batch) {
            *self.flying.entry(ch).or_default() += 1;
        }
        self.inflight += 1;
        self.last_start = Some(Instant::now());
        let job = Send {
            rule: self.rule.clone(),
            store: self.store.clone(),
            sender: self.sender.clone(),
            cancel: self.cancel.clone(),
        };
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let ended = job.run(&batch).await;
            // the worker may be gone (shutdown); nothing to tell then
            let _told = done.send((batch, ended));
        });
    }

    async fn flush_discards(&mut self) {
        if self.discards.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.discards);
        if let Err(e) = self.store.discard(&self.rule.id, &ids).await {
            // harmless: a takeover re-reads them and drops them again
            debug!(rule = %self.rule.id, cause = %e, "integration delivery: cannot discard entries");
        }
    }
}

/// The distinct channels of a batch.
fn channels(batch: &Staged) -> HashSet<String> {
    batch.entries.iter().map(|e| e.channel.clone()).collect()
}
