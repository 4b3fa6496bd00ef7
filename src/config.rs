//! Command line and environment configuration (clap derive; every flag is
//! also an `OCCUPANCY_*` variable), validated before anything binds.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::store::RedisConfig;

/// Shortest session lease a client or operator may ask for.
pub const MIN_SESSION_TTL: Duration = Duration::from_secs(1);
/// Longest session lease.
pub const MAX_SESSION_TTL: Duration = Duration::from_secs(600);

/// The `occupancy` command line.
#[derive(Debug, Parser)]
#[command(
    name = "occupancy",
    version,
    about = "gRPC occupancy service",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Server options, for the default `serve`.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server (the default).
    Serve(ServeArgs),
    /// Print the occupancy of channels.
    Get(crate::cli::GetArgs),
    /// List active channels (every page).
    List(crate::cli::ListArgs),
    /// Follow channels live: a refreshing table, busiest first.
    Watch(crate::cli::WatchArgs),
    /// Print the app-wide totals (active channels, connections, presence
    /// members, sessions).
    Stats(crate::cli::StatsArgs),
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 15s, 250ms, 2m)"))
}

fn parse_session_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < MIN_SESSION_TTL || d > MAX_SESSION_TTL {
        return Err("must be between 1s and 10m".into());
    }
    Ok(d)
}

fn parse_positive(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() || d > Duration::from_secs(60) {
        return Err("must be more than 0 and at most 60s".into());
    }
    Ok(d)
}

/// An HTTP listen address: `HOST:PORT`, or a bare port for loopback.
fn parse_http_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| "must be HOST:PORT (e.g. 127.0.0.1:8080) or a port for loopback".to_string())
}

fn parse_grace(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > Duration::from_secs(600) {
        return Err("must be at most 10m".into());
    }
    Ok(d)
}

/// Options of `occupancy serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "OCCUPANCY_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Address of the HTTP side (REST, server-sent events, /stats,
    /// /metrics, the dashboard); off unless set. A bare port listens on
    /// loopback.
    #[arg(long, env = "OCCUPANCY_HTTP_LISTEN", value_parser = parse_http_listen)]
    pub http_listen: Option<SocketAddr>,
    /// Redis URL (redis:// or rediss://); unset runs on the in-memory store
    /// (one process only).
    #[arg(long, env = "OCCUPANCY_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key, so deployments can share a Redis.
    #[arg(long, env = "OCCUPANCY_KEY_PREFIX", default_value = "occupancy")]
    pub key_prefix: String,
    /// Lease of a new session (1s to 10m); KeepAlive may change it per session.
    #[arg(long, env = "OCCUPANCY_SESSION_TTL", default_value = "15s", value_parser = parse_session_ttl)]
    pub session_ttl: Duration,
    /// Bound on every Redis call and connection attempt; past it a call
    /// fails with UNAVAILABLE.
    #[arg(long, env = "OCCUPANCY_REDIS_TIMEOUT", default_value = "1s", value_parser = parse_positive)]
    pub redis_timeout: Duration,
    /// How often each replica looks for expired sessions.
    #[arg(long, env = "OCCUPANCY_REAP_INTERVAL", default_value = "250ms", value_parser = parse_positive)]
    pub reap_interval: Duration,
    /// How often the store is probed for the health service.
    #[arg(long, env = "OCCUPANCY_HEALTH_INTERVAL", default_value = "1s", value_parser = parse_positive)]
    pub health_interval: Duration,
    /// How long open calls may run after SIGTERM/SIGINT before they are cut.
    #[arg(long, env = "OCCUPANCY_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_grace)]
    pub shutdown_grace: Duration,
    /// Number of Redis event stream shards.
    #[arg(long, env = "OCCUPANCY_EVENT_SHARDS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub event_shards: u32,
    /// Changes each Redis event stream shard keeps, approximately.
    #[arg(long, env = "OCCUPANCY_STREAM_MAX_LEN", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub stream_max_len: u64,
    /// Log format.
    #[arg(long, env = "OCCUPANCY_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// Where state lives.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// In this process.
    Memory,
    /// In Redis.
    Redis(RedisConfig),
}

/// Validated server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The store.
    pub store: StoreConfig,
    /// Lease of a new session.
    pub session_ttl: Duration,
    /// Expiry scan period.
    pub reap_interval: Duration,
    /// Health probe period.
    pub health_interval: Duration,
    /// Drain time on shutdown.
    pub shutdown_grace: Duration,
    /// Where the HTTP side listens, if anywhere.
    pub http_listen: Option<SocketAddr>,
}

impl Config {
    /// Defaults with the in-memory store.
    pub fn memory() -> Self {
        Self {
            store: StoreConfig::Memory,
            session_ttl: Duration::from_secs(15),
            reap_interval: Duration::from_millis(250),
            health_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            http_listen: None,
        }
    }

    /// Defaults with a Redis store.
    pub fn redis(redis: RedisConfig) -> Self {
        Self {
            store: StoreConfig::Redis(redis),
            ..Self::memory()
        }
    }
}

impl ServeArgs {
    /// The validated server configuration.
    ///
    /// # Errors
    /// A message naming the bad option.
    pub fn to_config(&self) -> Result<Config, String> {
        let store = match &self.redis_url {
            None => StoreConfig::Memory,
            Some(url) => {
                redis::Client::open(url.as_str()).map_err(|e| format!("invalid --redis-url: {e}"))?;
                crate::store::redis::keys::validate_prefix(&self.key_prefix)
                    .map_err(|e| format!("invalid --key-prefix: {e}"))?;
                StoreConfig::Redis(RedisConfig {
                    url: url.clone(),
                    key_prefix: self.key_prefix.clone(),
                    timeout: self.redis_timeout,
                    default_ttl: self.session_ttl,
                    event_shards: self.event_shards,
                    stream_max_len: self.stream_max_len,
                })
            }
        };
        Ok(Config {
            store,
            session_ttl: self.session_ttl,
            reap_interval: self.reap_interval,
            health_interval: self.health_interval,
            shutdown_grace: self.shutdown_grace,
            http_listen: self.http_listen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_rejections() {
        let cli = Cli::try_parse_from(["occupancy"]).unwrap();
        assert!(cli.command.is_none());
        let cfg = cli.serve.to_config().unwrap();
        assert!(matches!(cfg.store, StoreConfig::Memory));
        assert_eq!(cfg.session_ttl, Duration::from_secs(15));
        assert!(Cli::try_parse_from(["occupancy", "--session-ttl", "500ms"]).is_err());
        assert!(Cli::try_parse_from(["occupancy", "--session-ttl", "11m"]).is_err());
        assert!(Cli::try_parse_from(["occupancy", "serve", "--listen", "nope"]).is_err());
        let cli = Cli::try_parse_from(["occupancy", "--redis-url", "redis://x", "--key-prefix", "a{b"]).unwrap();
        assert!(cli.serve.to_config().unwrap_err().contains("key-prefix"));
        let cli = Cli::try_parse_from(["occupancy", "--http-listen", "8080"]).unwrap();
        assert_eq!(
            cli.serve.to_config().unwrap().http_listen,
            Some(([127, 0, 0, 1], 8080).into())
        );
        assert!(Cli::try_parse_from(["occupancy", "--http-listen", "nope"]).is_err());
        let cli = Cli::try_parse_from(["occupancy", "--redis-url", "nope://"]).unwrap();
        assert!(cli.serve.to_config().is_err());
    }
}
