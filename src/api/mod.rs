//! gRPC adapters: each handler converts the request into domain types
//! (failures become INVALID_ARGUMENT naming the field), calls the store,
//! and converts the result back.

pub mod auth;
mod connection;
pub mod convert;
mod integrations;
mod occupancy;

pub use connection::ConnectionApi;
pub use integrations::IntegrationApi;
pub use occupancy::OccupancyApi;
pub(crate) use occupancy::{list_for, until_expiry};
