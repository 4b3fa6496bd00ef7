//! The client subcommands of the `occupancy` binary: `get`, `list`,
//! `watch`, `stats` and `integrations`, for people (tables) and scripts
//! (`--json`, one object a line), and `health`, a probe for container
//! health checks.
//!
//! Exit codes: 0 success, 1 other errors, 2 bad usage or an argument the
//! service refused (INVALID_ARGUMENT), 3 the service could not be reached
//! (no connection, or no answer in time), 4 the service answered but its
//! store (Redis) is unavailable. `health` exits 0 when SERVING and 1
//! otherwise, as container and Kubernetes probes expect. Output goes
//! through `output::write_out`: a reader that stops reading ends the
//! command quietly with 0.
//!
//! One file per group: `read.rs` (`get`, `list`, `stats`), `watch.rs`,
//! `health.rs`, `integrations.rs` (with what it prints), and the tables
//! and JSON the others print (`output.rs`).

use std::time::Duration;

use clap::Args;
use occupancy_client::{Client, Error};
use tonic::Code;

mod health;
mod integrations;
pub(crate) mod output;
mod read;
mod watch;

pub use health::{health, HealthArgs};
pub use integrations::{integrations, IntegrationsArgs, IntegrationsCommand};
pub use read::{get, list, stats, GetArgs, ListArgs, StatsArgs};
pub use watch::{watch, WatchArgs};

/// Exit code for bad usage or a refused argument.
pub const EXIT_USAGE: i32 = 2;
/// Exit code when the service cannot be reached.
pub const EXIT_UNREACHABLE: i32 = 3;
/// Exit code when the service answered that its store is unavailable.
pub const EXIT_STORE_UNAVAILABLE: i32 = 4;
/// Where the CLI looks for the service by default: where it listens by
/// default.
pub const DEFAULT_ENDPOINT: &str = crate::config::defaults::LISTEN;

/// Where the service is.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Service address(es), comma-separated (several replicas, or one load
    /// balancer): HOST:PORT, http://HOST:PORT, or https://HOST:PORT for TLS.
    #[arg(
        long,
        env = "OCCUPANCY_ENDPOINT",
        default_value = DEFAULT_ENDPOINT,
        value_delimiter = ','
    )]
    pub endpoint: Vec<String>,
    /// Print JSON, one object a line, instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Give up on a call after this long.
    #[arg(long, default_value = crate::config::defaults::CLIENT_TIMEOUT_ARG, value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub auth: ClientAuth,
}

/// Credentials and TLS trust of a client command.
#[derive(Debug, Clone, Args)]
pub struct ClientAuth {
    /// API key, `KEY_ID:SECRET` (prefer the variable: arguments show in
    /// process lists).
    #[arg(long, env = "OCCUPANCY_KEY", hide_env_values = true, conflicts_with = "token")]
    pub key: Option<String>,
    /// Signed token (JWT), instead of a key.
    #[arg(long, env = "OCCUPANCY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate file (PEM) to trust for https:// endpoints, instead
    /// of the system's roots.
    #[arg(long, env = "OCCUPANCY_CA")]
    pub ca: Option<std::path::PathBuf>,
}

impl ClientAuth {
    /// Applies the credential and CA to a client builder.
    ///
    /// # Errors
    /// A message naming `--ca` when the file cannot be read.
    pub fn apply(&self, mut b: occupancy_client::ClientBuilder) -> Result<occupancy_client::ClientBuilder, String> {
        if let Some(k) = &self.key {
            b = b.api_key(k.trim());
        }
        if let Some(t) = &self.token {
            b = b.token(t.trim());
        }
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca).map_err(|e| format!("--ca {}: {e}", ca.display()))?;
            b = b.ca_certificate(pem);
        }
        Ok(b)
    }
}

pub(crate) fn client(t: &Target) -> Result<Client, Error> {
    let mut b = Client::builder().request_timeout(t.timeout).attempts(2);
    for e in &t.endpoint {
        b = b.endpoint(e.trim());
    }
    b = t.auth.apply(b).map_err(Error::InvalidEndpoint)?;
    b.connect()
}

/// Prints `err` and returns the exit code for it.
pub(crate) fn fail(err: &Error, target: &Target) -> i32 {
    let at = target.endpoint.join(",");
    if err.is_store_unavailable() {
        eprintln!("error: the occupancy service at {at} answered, but its store (Redis) is unavailable; retry later");
        return EXIT_STORE_UNAVAILABLE;
    }
    if err.is_unreachable() {
        eprintln!("error: the occupancy service cannot be reached at {at}: {err}");
        return EXIT_UNREACHABLE;
    }
    if err.code() == Some(Code::Unimplemented) {
        eprintln!(
            "error: {at} answered, but does not offer the occupancy service (UNIMPLEMENTED): is it the right address?"
        );
        return 1;
    }
    eprintln!("error: {err}");
    match err.code() {
        None | Some(Code::InvalidArgument) => EXIT_USAGE,
        Some(_) => 1,
    }
}
