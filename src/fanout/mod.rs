//! Live occupancy: the replica's event hub (fed by the store's event
//! readers), the demand that lets the feed pause while nobody listens, and
//! the per-stream subscriptions the hub dispatches to.
//!
//! Where events reach a subscriber: [`Hub::publish`](hub::Hub) drops each
//! change into the inbox of every subscription that follows its channel;
//! [`subscription::stream`] reads that inbox and yields the subscriber's
//! responses, encoded by [`wire`].

pub mod demand;
pub mod hub;
pub mod subscription;
pub mod wire;

pub use demand::Demand;
pub use hub::Hub;
pub use subscription::Spec;
