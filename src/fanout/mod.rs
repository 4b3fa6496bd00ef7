//! Live occupancy: the replica's event hub (fed by the store's event
//! readers) and the per-stream subscriptions it dispatches to.

pub mod hub;
pub mod subscription;
pub mod wire;

pub use hub::Hub;
pub use subscription::Spec;
