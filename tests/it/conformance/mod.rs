//! The store conformance suite: every case runs, through the gRPC API,
//! against the in-memory store and against a private Redis.

mod bad_input;
mod batches;
mod counts;
mod reads;
mod sessions;

use std::time::Duration;

/// Lease of sessions in these tests (shorter than the service allows, so
/// expiry tests are quick).
const TTL: Duration = Duration::from_millis(600);

/// Lease for sessions that must outlive a test.
const LONG_TTL_MS: u32 = 60_000;
