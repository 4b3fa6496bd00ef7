//! Integrations: occupancy events pushed to webhooks.
//!
//! - [`rule`]: what a rule is and which events a change makes for it;
//!   [`limits`]: every limit and default.
//! - [`store`]: where rules and delivery queues live, and the queue
//!   protocol that makes every change enqueued once and every batch
//!   delivered by one replica at a time.
//! - [`payload`]: request bodies and Standard Webhooks signatures;
//!   [`sender`]: one signed request and what its answer means.
//! - [`source`]: every replica hands every change to the store, which
//!   enqueues it once; [`delivery`]: one replica at a time per rule sends
//!   its queue, in order per channel, and retries.

pub mod delivery;
pub mod limits;
pub mod metrics;
pub mod payload;
pub mod rule;
pub mod sender;
pub mod source;
pub mod store;

pub use rule::{Kind, Mode, Rule, RuleSpec};
pub use store::{DeadLetter, Entry, IntegrationStore, MemoryIntegrations, Staged};

use std::sync::Arc;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::domain::ChangeEvent;
use crate::fanout::{Demand, Hub};
use crate::store::ChangeSink;

/// Integrations running on this replica: the source the feed hands every
/// change to, and the delivery supervisor.
pub struct Integrations {
    /// Where rules and queues live.
    pub store: Arc<dyn IntegrationStore>,
    /// The replica's source.
    pub source: Arc<source::Source>,
    /// Sends requests (also for test sends).
    pub sender: sender::Sender,
    source_wake: Arc<Notify>,
    delivery_wake: Arc<Notify>,
}

impl std::fmt::Debug for Integrations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Integrations")
            .field("gaps", &self.source.gaps())
            .finish()
    }
}

impl Integrations {
    /// Starts the source, and delivery when `deliver`, on this replica
    /// until `cancel`, sending with `sender`; `rules_changed` (notified by
    /// the API after each change of a rule here) makes both look at the
    /// rules at once. The delivery task is returned so shutdown can wait
    /// for it (its workers leave their batches staged for the next holder).
    pub fn start(
        store: Arc<dyn IntegrationStore>,
        hub: Option<Arc<Hub>>,
        sender: sender::Sender,
        rules_changed: Arc<Notify>,
        deliver: bool,
        cancel: &CancellationToken,
    ) -> (Arc<Self>, Option<JoinHandle<()>>) {
        let source_wake = Arc::new(Notify::new());
        let delivery_wake = Arc::new(Notify::new());
        let queued = Arc::new(Notify::new());
        store.watch(queued.clone(), cancel.clone());
        let source = source::start(store.clone(), hub, source_wake.clone(), queued.clone(), cancel.clone());
        let delivery = deliver.then(|| {
            delivery::start(
                store.clone(),
                sender.clone(),
                delivery_wake.clone(),
                queued,
                cancel.clone(),
            )
        });
        let this = Arc::new(Self {
            store,
            source,
            sender,
            source_wake,
            delivery_wake,
        });
        let forward = this.clone();
        let stop = cancel.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = rules_changed.notified() => forward.rules_changed(),
                }
            }
        });
        (this, delivery)
    }

    /// A rule changed through this replica: the source and delivery look
    /// at the rules at once rather than at their next poll.
    pub fn rules_changed(&self) {
        self.source_wake.notify_one();
        self.delivery_wake.notify_one();
    }
}

/// The feed's sink when integrations run: every change goes to the
/// integration source and to the hub (whose demand the feed follows; the
/// source adds to it while rules exist).
pub struct Tee {
    /// The replica's hub.
    pub hub: Arc<Hub>,
    /// The integration source.
    pub source: Arc<source::Source>,
}

impl ChangeSink for Tee {
    fn publish(&self, event: ChangeEvent) {
        self.source.publish(&event);
        self.hub.publish(event);
    }

    fn resync(&self) {
        self.source.resync();
        self.hub.resync();
    }

    fn demand(&self) -> Option<&Demand> {
        self.hub.demand()
    }
}
