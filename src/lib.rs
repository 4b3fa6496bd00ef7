//! Occupancy service: which connections are attached to which realtime
//! channels, with which permissions, and who is in presence, counted
//! exactly and shared by any number of stateless replicas through Redis.
//!
//! # Layout
//! - [`domain`]: identifiers, modes, metrics, operations and the occupancy
//!   rules as a pure state machine; no tonic, no Redis. Every limit is set
//!   in [`domain::limits`].
//! - [`store`]: the [`store::Store`] trait, with an in-memory
//!   implementation (one process) and a Redis one (a Lua function library
//!   from `src/store/redis/lua/`, every key built in `store::redis::keys`;
//!   a write becomes the Lua functions' arguments, and their replies
//!   domain values again, in `store::redis::codec`, file
//!   `src/store/redis/codec/`; integration rules and queues as
//!   standalone scripts under `src/store/redis/lua/integrations/`).
//! - [`fanout`]: live occupancy. The store's feed hands every committed
//!   change to the replica's [`fanout::Hub`], which drops it into the inbox
//!   of each subscription following the channel; events reach a subscriber
//!   through [`fanout::subscription::stream`] (snapshot, filters, debounce,
//!   resume ids), encoded once per event by [`fanout::wire`].
//! - [`auth`]: access control without transport: key files, capabilities
//!   per channel pattern, signed tokens, reloads.
//! - [`tls`]: server TLS with certificate reload and optional mTLS.
//! - [`api`]: gRPC adapters from protobuf to the domain and back (and the
//!   interceptor that authenticates calls).
//! - [`http`]: the HTTP side (axum): Ably-shaped REST, server-sent
//!   events, `/stats`, `/metrics`, the OpenAPI document and the dashboard
//!   (with the same access control as gRPC when keys are configured).
//! - [`convert`]: domain values as protobuf messages and back, for all of
//!   the above.
//! - [`integrations`]: occupancy events pushed to webhooks: rules, their
//!   queues in the store, the source that enqueues each change once and
//!   the workers that deliver, sign and retry.
//! - [`telemetry`]: Prometheus metrics of the replica.
//! - [`error`]: the one error type; [`Error::codes`] is where every gRPC
//!   code and HTTP status is chosen.
//! - [`config`]: command line and environment configuration; every
//!   default is set in [`config::defaults`].
//! - [`cli`]: the `get`, `list`, `watch`, `stats`, `integrations` and
//!   `health` client subcommands.
//! - [`server`]: [`run`] assembles the services, health, reflection,
//!   background tasks and graceful shutdown on an already-bound listener.
//! - [`proto`]: generated code of `proto/occupancy/v1/occupancy.proto`.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod convert;
pub mod domain;
pub mod error;
pub mod fanout;
pub mod http;
pub mod integrations;
pub mod proto;
pub mod server;
pub mod store;
mod sync;
pub mod telemetry;
pub mod tls;

pub use config::Config;
pub use error::{Error, Result};
pub use server::run;
