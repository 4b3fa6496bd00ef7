//! Delivery: one replica at a time holds a rule's lease and sends its
//! queue, in order per channel, signed, batched and retried.
//!
//! - The supervisor on every replica takes the lease of every rule nobody
//!   holds (the store's lease expires when its holder dies, so another
//!   replica takes over within [`LEASE_TTL`]) and runs a worker per
//!   rule it holds.
//! - The worker reads the rule's queue in order and keeps, per channel,
//!   the entries not yet sent. A channel has at most one batch in flight,
//!   so a later event of a channel never overtakes an earlier one, retries
//!   included. Vacated events wait for the rule's delay and are dropped
//!   together with the occupied event that re-occupies the channel within
//!   it; occupancy events that flip nothing wait for the debounce and are
//!   coalesced into the latest.
//! - A batch is staged in the store before its first request and removed
//!   with its entries after a 2xx, so a replica that takes over resends
//!   the same batch with the same `webhook-id` (receivers drop repeats by
//!   it) before anything newer.
//! - Each request runs in its own task with the rule's timeout, at most
//!   the rule's concurrency at once: a target that never answers holds only
//!   its own rule's requests, never another rule's or the gRPC path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::rule::Rule;
use super::sender::Sender;
use super::store::IntegrationStore;

mod send;
mod worker;

pub use send::backoff;
use worker::Worker;

/// How long a rule's lease lasts without renewal: the longest a dead
/// replica's rules wait for another replica.
pub const LEASE_TTL: Duration = Duration::from_secs(5);
/// How often a holder renews, and the supervisor looks for free rules.
pub const LEASE_RENEW: Duration = Duration::from_millis(1_000);
/// Longest wait between two reads of an idle queue whose entries another
/// replica enqueues (this replica's own enqueues wake the worker at once).
const MAX_POLL: Duration = Duration::from_millis(100);
/// Shortest wait between reads.
const MIN_POLL: Duration = Duration::from_millis(5);

/// Starts delivery on this replica until `cancel`: `holder` names the
/// replica in leases; `queued` wakes workers after local enqueues;
/// `rules_changed` makes the supervisor look at the rules at once.
pub fn start(
    store: Arc<dyn IntegrationStore>,
    sender: Sender,
    rules_changed: Arc<Notify>,
    queued: Arc<Notify>,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    let holder = format!("{:016x}", rand::random::<u64>());
    tokio::spawn(supervise(store, sender, holder, rules_changed, queued, cancel))
}

struct Running {
    rule: Rule,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

async fn supervise(
    store: Arc<dyn IntegrationStore>,
    sender: Sender,
    holder: String,
    rules_changed: Arc<Notify>,
    queued: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut tick = tokio::time::interval(LEASE_RENEW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {}
            () = rules_changed.notified() => {}
        }
        let rules = match store.rules().await {
            Ok((_, rules)) => rules,
            Err(e) => {
                debug!(cause = %e, "integration delivery: cannot read rules");
                continue;
            }
        };
        let current: HashMap<&str, &Rule> = rules.iter().map(|r| (r.id.as_str(), r)).collect();
        running.retain(|id, w| {
            let keep = !w.task.is_finished() && current.get(id.as_str()).is_some_and(|r| **r == w.rule);
            if !keep {
                // a changed rule restarts with its new settings
                w.cancel.cancel();
            }
            keep
        });
        for rule in rules.iter().filter(|r| !r.paused) {
            if running.contains_key(&rule.id) {
                continue;
            }
            match store.lease(&rule.id, &holder, LEASE_TTL).await {
                Ok(true) => {
                    let token = cancel.child_token();
                    let w = Worker::new(
                        rule.clone(),
                        store.clone(),
                        sender.clone(),
                        holder.clone(),
                        queued.clone(),
                        token.clone(),
                    );
                    info!(rule = %rule.id, "integration delivery: holding rule");
                    running.insert(
                        rule.id.clone(),
                        Running {
                            rule: rule.clone(),
                            cancel: token,
                            task: tokio::spawn(w.run()),
                        },
                    );
                }
                Ok(false) => {}
                Err(e) => debug!(rule = %rule.id, cause = %e, "integration delivery: cannot take lease"),
            }
        }
    }
    for (_, w) in running.drain() {
        w.cancel.cancel();
        let _ended = w.task.await;
    }
}
