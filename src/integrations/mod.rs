//! Integrations: occupancy events pushed to webhooks.
//!
//! - [`rule`]: what a rule is; [`entries`]: which events a change makes for it;
//!   [`limits`]: every limit and default.
//! - [`store`]: where rules and delivery queues live, and the queue
//!   protocol that makes every change enqueued once and every batch
//!   delivered by one replica at a time.
//! - [`payload`]: request bodies and Standard Webhooks signatures;
//!   [`sender`]: one signed request and what its answer means.
//! - [`source`]: one replica per event shard hands its changes to the
//!   store, which enqueues each once; [`delivery`]: one replica at a time
//!   per rule sends its queue, in order per channel, and retries.

pub mod delivery;
pub mod entries;
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
    /// The replica's source.
    pub source: Arc<source::Source>,
    delivery_wake: Arc<Notify>,
}

impl std::fmt::Debug for Integrations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Integrations")
            .field("gaps", &self.source.gaps())
            .field("coalesced", &self.source.coalesced())
            .finish()
    }
}

impl Integrations {
    /// Starts the source, and delivery when `deliver`, on this replica
    /// until `cancel`, for a store of `shards` event shards, sending with
    /// `sender`. The delivery task is returned
    /// so shutdown can wait for it (its workers leave their batches staged
    /// for the next holder).
    pub fn start(
        store: Arc<dyn IntegrationStore>,
        hub: Option<Arc<Hub>>,
        shards: u32,
        sender: sender::Sender,
        deliver: bool,
        cancel: &CancellationToken,
    ) -> (Arc<Self>, Option<JoinHandle<()>>) {
        let delivery_wake = Arc::new(Notify::new());
        let queued = Arc::new(Notify::new());
        store.watch(queued.clone(), cancel.clone());
        let source = source::start(store.clone(), hub, shards, queued.clone(), cancel.clone());
        let delivery = deliver.then(|| {
            delivery::start(
                store.clone(),
                sender.clone(),
                delivery_wake.clone(),
                queued,
                cancel.clone(),
            )
        });
        let this = Arc::new(Self { source, delivery_wake });
        (this, delivery)
    }

    /// A rule changed through this replica: returns once the source has
    /// read the rules (so every change from now on reaches a new rule),
    /// and makes delivery look at them at once rather than at its next
    /// poll.
    pub async fn rules_changed(&self) {
        self.source.refresh().await;
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
