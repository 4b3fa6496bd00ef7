//! The integration test binary: one module per area, sharing `support`.

#![allow(unreachable_pub)]

mod abuse;
mod cli;
mod client;
mod conformance;
mod examples;
mod faults;
mod fixture;
mod fuzz;
mod model;
mod model_check;
mod nginx;
mod process;
mod redis_store;
mod subscribe;
mod support;
