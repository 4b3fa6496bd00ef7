//! Where rules and their delivery queues live: the [`IntegrationStore`]
//! trait and its in-memory implementation (the Redis one is
//! `store::redis::integrations`).
//!
//! The queue protocol, shared by both:
//! - **Source.** Every replica hands every change to [`IntegrationStore::enqueue`],
//!   per event shard in log order. The store skips changes at or before the
//!   shard's high-water mark, so a change is enqueued once however many
//!   replicas saw it, and a replica that dies loses nothing the others see.
//!   The same atomic step keeps each channel's last metrics (to know
//!   occupied/vacated flips and which categories changed) and checks that
//!   the caller evaluated the current rules (else [`Enqueued::Stale`]).
//! - **Delivery.** One replica at a time holds a rule's lease and reads its
//!   queue in order. Before a request it stages the batch (its id and
//!   entries), so a replica that takes over sends the same batch with the
//!   same `webhook-id` first; a 2xx completes it (entries and stage go in
//!   one step), a final failure moves it to the dead letters.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::entries::entries_for;
use super::limits;
use super::rule::{Kind, Rule};
use crate::domain::{Metrics, Pos};
use crate::error::{Error, Result};

/// A rule as the source hands it to the store: its id, [`Rule::want_bits`]
/// and [`Rule::category_bits`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    /// Rule id.
    pub id: String,
    /// [`Rule::want_bits`].
    pub wants: u8,
    /// [`Rule::category_bits`].
    pub categories: u16,
}

/// One change as the source hands it to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceEvent {
    /// Position in its shard's log.
    pub pos: Pos,
    /// The channel.
    pub channel: String,
    /// Metrics after the change.
    pub metrics: Metrics,
    /// Commit time, ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// Indexes into the call's rules of the rules that cover the channel.
    pub rules: Vec<u16>,
}

/// What an enqueue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Entries appended (0 when every change was already enqueued).
    Done {
        /// Entries appended over all rules.
        entries: usize,
    },
    /// The rules changed since the caller read them: nothing done; read
    /// the rules again and call again.
    Stale,
}

/// One queued event of one rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Queue position, `ms-seq`: unique within the rule, increasing.
    pub id: String,
    /// The channel.
    pub channel: String,
    /// Event kind.
    pub kind: Kind,
    /// Whether the change flipped the channel between occupied and vacated.
    pub flip: bool,
    /// Metrics after the change.
    pub metrics: Metrics,
    /// Commit time of the change, ms since the Unix epoch.
    pub timestamp_ms: i64,
}

impl Entry {
    /// The queue position as a [`Pos`] (for ordering).
    pub fn pos(&self) -> Pos {
        Pos::parse(&self.id).unwrap_or_default()
    }
}

/// A batch about to be sent, or being retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    /// The batch id: the `webhook-id` of every attempt.
    pub id: String,
    /// Its events, in order.
    pub entries: Vec<Entry>,
}

/// A batch that could not be delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The batch as it was sent.
    pub batch: Staged,
    /// Why it failed last (`HTTP 500`, `timed out` …).
    pub reason: String,
    /// Attempts made.
    pub attempts: u32,
    /// When it was given up, ms since the Unix epoch.
    pub dead_ms: i64,
}

/// Rules and delivery queues, shared by every replica.
#[async_trait]
pub trait IntegrationStore: Send + Sync + 'static {
    /// The current rules and their version (which every change of a rule
    /// increments).
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the store cannot be reached.
    async fn rules(&self) -> Result<(u64, Vec<Rule>)>;

    /// Stores a new rule (`create`) or replaces an existing one.
    ///
    /// # Errors
    /// [`Error::NotFound`] when replacing a rule that does not exist;
    /// [`Error::ResourceExhausted`] past [`limits::MAX_RULES`].
    async fn put_rule(&self, rule: &Rule, create: bool) -> Result<()>;

    /// Deletes a rule with its queue, staged batches, dead letters and
    /// lease: whether it existed.
    ///
    /// # Errors
    /// As [`IntegrationStore::rules`].
    async fn delete_rule(&self, id: &str) -> Result<bool>;

    /// Enqueues the entries `events` of shard `shard` make, for `rules`
    /// evaluated at rules version `version` (see the module docs).
    ///
    /// # Errors
    /// As [`IntegrationStore::rules`].
    async fn enqueue(&self, version: u64, shard: u32, rules: &[RuleRef], events: &[SourceEvent]) -> Result<Enqueued>;

    /// Takes or renews `rule`'s delivery lease for `holder`: whether
    /// `holder` holds it now.
    ///
    /// # Errors
    /// As [`IntegrationStore::rules`].
    async fn lease(&self, rule: &str, holder: &str, ttl: Duration) -> Result<bool>;

    /// Gives the lease up if `holder` holds it.
    ///
    /// # Errors
    /// As [`IntegrationStore::rules`].
    async fn release(&self, rule: &str, holder: &str) -> Result<()>;

    /// Up to `limit` queued entries after `after` (from the start when
    /// `None`), in order.
    ///
    /// # Errors
    /// As [`IntegrationStore::rules`].
    async fn read(&self, rule: &str, after: Option<&str>, limit: usize) -> Result<Vec<Entry>>;

    /// Records a batch before its first request (nothing when the rule
    /// does not exist: it was deleted with its queue).
    ///
    /// # Errors
    /// As [`IntegrationStore::rules`].
    async fn stage(&self, rule: &str, batch: &Staged) -> Result<()>;

    /// The staged batches, oldest first.
    ///
    /// # Errors
    /// As [`IntegrationStore::rules`].
    async fn staged(&self, rule: &str) -> Result<Vec<Staged>>;

    /// A staged batch was delivered: removes it and its entries. With
    /// `front`, the caller knows no entry before the batch's last is
    /// waiting, and the store removes every entry up to it at once (Redis:
    /// `XTRIM MINID`, far cheaper than deleting entries one by one).
    ///
    /// # Errors
    /// As [`IntegrationStore::rules`].
    async fn complete(&self, rule: &str, batch: &Staged, front: bool) -> Result<()>;

    /// Removes entries that will not be sent (coalesced by the debounce, or
    /// a vacated event cancelled by re-occupation).
    ///
    /// # Errors
    /// As [`IntegrationStore::rules`].
    async fn discard(&self, rule: &str, entry_ids: &[String]) -> Result<()>;

    /// Moves a staged batch to the dead letters (removing it and its
    /// entries from the queue), keeping at most
    /// [`limits::MAX_DEAD_LETTERS`].
    ///
    /// # Errors
    /// As [`IntegrationStore::rules`].
    async fn kill(&self, rule: &str, dead: &DeadLetter) -> Result<()>;

    /// Up to `limit` dead letters, oldest first.
    ///
    /// # Errors
    /// As [`IntegrationStore::rules`].
    async fn dead_letters(&self, rule: &str, limit: usize) -> Result<Vec<DeadLetter>>;

    /// Queues the events of the named dead letters (every one when
    /// `batch_ids` is empty) again, at the queue's end, and removes them
    /// from the dead letters: the number of events queued.
    ///
    /// # Errors
    /// As [`IntegrationStore::rules`].
    async fn replay(&self, rule: &str, batch_ids: &[String]) -> Result<u64>;

    /// Wakes `queued` whenever entries are appended by any replica, until
    /// `cancel`, so delivery workers read at once rather than at their
    /// next poll. Best effort: workers poll anyway.
    fn watch(&self, queued: Arc<Notify>, cancel: CancellationToken);

    /// Entries waiting in the queue (staged ones included).
    ///
    /// # Errors
    /// As [`IntegrationStore::rules`].
    async fn backlog(&self, rule: &str) -> Result<u64>;
}

/// The queue entries one enqueue call makes, by rule: the decision both
/// stores take (the Redis store in Lua). `last` holds each channel's last
/// metrics and is updated.
pub fn plan(
    last: &mut HashMap<String, Metrics>,
    rules: &[RuleRef],
    events: &[SourceEvent],
) -> Vec<(usize, usize, Kind, bool)> {
    let mut out = Vec::new();
    for (ei, e) in events.iter().enumerate() {
        let prev = last.get(&e.channel).copied().unwrap_or_default();
        for &ri in &e.rules {
            if let Some(r) = rules.get(usize::from(ri)) {
                for (kind, flip) in entries_for(&prev, &e.metrics, r.wants, r.categories) {
                    out.push((usize::from(ri), ei, kind, flip));
                }
            }
        }
        if e.metrics.connections > 0 {
            last.insert(e.channel.clone(), e.metrics);
        } else {
            last.remove(&e.channel);
        }
    }
    out
}

#[derive(Debug, Default)]
struct Inner {
    version: u64,
    rules: BTreeMap<String, Rule>,
    last: HashMap<String, Metrics>,
    high_water: HashMap<u32, Pos>,
    next_seq: u64,
    queues: HashMap<String, BTreeMap<u64, Entry>>,
    staged: HashMap<String, BTreeMap<String, Staged>>,
    dead: HashMap<String, VecDeque<DeadLetter>>,
    leases: HashMap<String, (String, Instant)>,
}

impl Inner {
    fn push(&mut self, rule: &str, mut entry: Entry) {
        self.next_seq += 1;
        entry.id = format!("0-{}", self.next_seq);
        self.queues
            .entry(rule.to_string())
            .or_default()
            .insert(self.next_seq, entry);
    }

    fn remove_entries(&mut self, rule: &str, ids: &[String]) {
        if let Some(q) = self.queues.get_mut(rule) {
            for id in ids {
                if let Some(p) = Pos::parse(id) {
                    q.remove(&p.seq);
                }
            }
        }
    }
}

/// Rules and queues of one process.
#[derive(Debug, Default)]
pub struct MemoryIntegrations {
    inner: Mutex<Inner>,
    /// Notified after every enqueue that appended entries.
    appended: Arc<Notify>,
}

impl MemoryIntegrations {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        crate::sync::lock(&self.inner)
    }
}

#[async_trait]
impl IntegrationStore for MemoryIntegrations {
    async fn rules(&self) -> Result<(u64, Vec<Rule>)> {
        let g = self.lock();
        Ok((g.version, g.rules.values().cloned().collect()))
    }

    async fn put_rule(&self, rule: &Rule, create: bool) -> Result<()> {
        let mut g = self.lock();
        let exists = g.rules.contains_key(&rule.id);
        if create && g.rules.len() >= limits::MAX_RULES {
            return Err(Error::ResourceExhausted(format!(
                "at most {} integration rules",
                limits::MAX_RULES
            )));
        }
        if !create && !exists {
            return Err(Error::NotFound(format!("integration rule {:?}", rule.id)));
        }
        g.rules.insert(rule.id.clone(), rule.clone());
        g.version += 1;
        Ok(())
    }

    async fn delete_rule(&self, id: &str) -> Result<bool> {
        let mut g = self.lock();
        let existed = g.rules.remove(id).is_some();
        g.queues.remove(id);
        g.staged.remove(id);
        g.dead.remove(id);
        g.leases.remove(id);
        g.version += 1;
        Ok(existed)
    }

    async fn enqueue(&self, version: u64, shard: u32, rules: &[RuleRef], events: &[SourceEvent]) -> Result<Enqueued> {
        let mut g = self.lock();
        if g.version != version {
            return Ok(Enqueued::Stale);
        }
        let hw = g.high_water.get(&shard).copied().unwrap_or_default();
        let fresh: Vec<SourceEvent> = events.iter().filter(|e| e.pos > hw).cloned().collect();
        let Some(top) = fresh.iter().map(|e| e.pos).max() else {
            return Ok(Enqueued::Done { entries: 0 });
        };
        g.high_water.insert(shard, top);
        let planned = plan(&mut g.last, rules, &fresh);
        let n = planned.len();
        for (ri, ei, kind, flip) in planned {
            let e = &fresh[ei];
            let entry = Entry {
                id: String::new(),
                channel: e.channel.clone(),
                kind,
                flip,
                metrics: e.metrics,
                timestamp_ms: e.timestamp_ms,
            };
            g.push(&rules[ri].id, entry);
        }
        drop(g);
        if n > 0 {
            self.appended.notify_waiters();
        }
        Ok(Enqueued::Done { entries: n })
    }

    async fn lease(&self, rule: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let mut g = self.lock();
        let now = Instant::now();
        match g.leases.get(rule) {
            Some((h, until)) if h != holder && *until > now => Ok(false),
            _ => {
                g.leases.insert(rule.to_string(), (holder.to_string(), now + ttl));
                Ok(true)
            }
        }
    }

    async fn release(&self, rule: &str, holder: &str) -> Result<()> {
        let mut g = self.lock();
        if g.leases.get(rule).is_some_and(|(h, _)| h == holder) {
            g.leases.remove(rule);
        }
        Ok(())
    }

    async fn read(&self, rule: &str, after: Option<&str>, limit: usize) -> Result<Vec<Entry>> {
        let g = self.lock();
        let from = after.and_then(Pos::parse).map_or(0, |p| p.seq.saturating_add(1));
        Ok(g.queues
            .get(rule)
            .map(|q| q.range(from..).take(limit).map(|(_, e)| e.clone()).collect())
            .unwrap_or_default())
    }

    async fn stage(&self, rule: &str, batch: &Staged) -> Result<()> {
        let mut g = self.lock();
        // as kill: a rule deleted meanwhile keeps nothing
        if !g.rules.contains_key(rule) {
            return Ok(());
        }
        g.staged
            .entry(rule.to_string())
            .or_default()
            .insert(batch.id.clone(), batch.clone());
        Ok(())
    }

    async fn staged(&self, rule: &str) -> Result<Vec<Staged>> {
        let g = self.lock();
        let mut out: Vec<Staged> = g
            .staged
            .get(rule)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        out.sort_by_key(|b| b.entries.first().map(Entry::pos));
        Ok(out)
    }

    async fn complete(&self, rule: &str, batch: &Staged, front: bool) -> Result<()> {
        let mut g = self.lock();
        let last = batch.entries.iter().map(Entry::pos).max();
        match (front, last, g.queues.get_mut(rule)) {
            (true, Some(last), Some(q)) => q.retain(|seq, _| *seq > last.seq),
            _ => {
                let ids: Vec<String> = batch.entries.iter().map(|e| e.id.clone()).collect();
                g.remove_entries(rule, &ids);
            }
        }
        if let Some(m) = g.staged.get_mut(rule) {
            m.remove(&batch.id);
        }
        Ok(())
    }

    async fn discard(&self, rule: &str, entry_ids: &[String]) -> Result<()> {
        self.lock().remove_entries(rule, entry_ids);
        Ok(())
    }

    async fn kill(&self, rule: &str, dead: &DeadLetter) -> Result<()> {
        let mut g = self.lock();
        if !g.rules.contains_key(rule) {
            return Ok(());
        }
        let ids: Vec<String> = dead.batch.entries.iter().map(|e| e.id.clone()).collect();
        g.remove_entries(rule, &ids);
        if let Some(m) = g.staged.get_mut(rule) {
            m.remove(&dead.batch.id);
        }
        let list = g.dead.entry(rule.to_string()).or_default();
        list.push_back(dead.clone());
        while list.len() > limits::MAX_DEAD_LETTERS {
            list.pop_front();
        }
        Ok(())
    }

    async fn dead_letters(&self, rule: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        let g = self.lock();
        Ok(g.dead
            .get(rule)
            .map(|l| l.iter().take(limit).cloned().collect())
            .unwrap_or_default())
    }

    async fn replay(&self, rule: &str, batch_ids: &[String]) -> Result<u64> {
        let mut g = self.lock();
        let Some(list) = g.dead.get_mut(rule) else {
            return Ok(0);
        };
        let (take, keep): (VecDeque<DeadLetter>, VecDeque<DeadLetter>) = std::mem::take(list)
            .into_iter()
            .partition(|d| batch_ids.is_empty() || batch_ids.contains(&d.batch.id));
        *list = keep;
        let mut n = 0;
        for d in take {
            for e in d.batch.entries {
                g.push(rule, e);
                n += 1;
            }
        }
        Ok(n)
    }

    async fn backlog(&self, rule: &str) -> Result<u64> {
        Ok(self.lock().queues.get(rule).map_or(0, |q| q.len() as u64))
    }

    fn watch(&self, queued: Arc<Notify>, cancel: CancellationToken) {
        let appended = self.appended.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = appended.notified() => queued.notify_waiters(),
                }
            }
        });
    }
}
