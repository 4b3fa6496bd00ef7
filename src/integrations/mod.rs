//! Integrations: occupancy events pushed to webhooks.
//!
//! - [`rule`]: what a rule is and which events a change makes for it;
//!   [`limits`]: every limit and default.
//! - [`store`]: where rules and delivery queues live, and the queue
//!   protocol that makes every change enqueued once and every batch
//!   delivered by one replica at a time.
//! - [`payload`]: request bodies and Standard Webhooks signatures;
//!   [`sender`]: one signed request and what its answer means.

pub mod limits;
pub mod payload;
pub mod rule;
pub mod sender;
pub mod store;

pub use rule::{Kind, Mode, Rule, RuleSpec};
pub use store::{DeadLetter, Entry, IntegrationStore, MemoryIntegrations, Staged};
