//! Command line and environment configuration (clap derive; every flag is
//! also an `OCCUPANCY_*` variable), validated before anything binds.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::domain::limits::{
    human, MAX_EVENT_SHARDS, MAX_INTERVAL, MAX_PARTITIONS, MAX_SESSION_TTL, MAX_SHUTDOWN_GRACE, MIN_SESSION_TTL,
    MIN_STREAM_MAX_LEN,
};
use crate::store::RedisConfig;

pub mod defaults;

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
    /// Make an API key: prints the client's credential and the key file
    /// entry.
    Key(crate::auth::commands::KeyArgs),
    /// Sign a short-lived token with an API key (HS256).
    Token(crate::auth::commands::TokenArgs),
    /// Print the app-wide totals (active channels, connections, presence
    /// members, sessions).
    Stats(crate::cli::StatsArgs),
    /// Check a replica's health (grpc.health.v1): exit 0 when SERVING,
    /// 1 otherwise; for container HEALTHCHECKs and Kubernetes exec probes.
    Health(crate::cli::HealthArgs),
    /// Manage integration rules (occupancy events pushed to webhooks):
    /// create, list, get, update, delete, pause, resume, test, and their
    /// dead letters (deliveries, replay).
    Integrations(crate::cli::IntegrationsArgs),
}

/// `HOST:PORT` to listen on, the host a name (`localhost`) or an address
/// (`0.0.0.0`, `[::]`). A name that resolves to several addresses listens
/// on the first IPv4 one (where most clients of `localhost` go first),
/// else on the first.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err("expected HOST:PORT (e.g. 127.0.0.1:50051, localhost:50051, 0.0.0.0:50051)".into());
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err("expected HOST:PORT with a port of 0 to 65535 (e.g. localhost:50051)".into());
    }
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("{host} resolves to no address"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 15s, 250ms, 2m)"))
}

fn parse_session_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < MIN_SESSION_TTL || d > MAX_SESSION_TTL {
        return Err(format!(
            "must be between {} and {}",
            human(MIN_SESSION_TTL),
            human(MAX_SESSION_TTL)
        ));
    }
    Ok(d)
}

fn parse_positive(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() || d > MAX_INTERVAL {
        return Err(format!("must be more than 0 and at most {}", human(MAX_INTERVAL)));
    }
    Ok(d)
}

/// An HTTP listen address: `HOST:PORT`, or a bare port for loopback.
fn parse_http_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    parse_listen(s).map_err(|e| format!("{e}; or a bare port for loopback (e.g. 8080)"))
}

fn parse_grace(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > MAX_SHUTDOWN_GRACE {
        return Err(format!("must be at most {}", human(MAX_SHUTDOWN_GRACE)));
    }
    Ok(d)
}

/// Options of `occupancy serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to serve gRPC on: HOST:PORT, the host a name or an address.
    #[arg(long, env = "OCCUPANCY_LISTEN", default_value = defaults::LISTEN, value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// Address of the HTTP side (REST, server-sent events, /stats,
    /// /metrics, the dashboard); off unless set. HOST:PORT resolved like
    /// --listen; a bare port listens on loopback.
    #[arg(long, env = "OCCUPANCY_HTTP_LISTEN", value_parser = parse_http_listen)]
    pub http_listen: Option<SocketAddr>,
    /// Redis URL (redis:// or rediss:// for TLS); unset runs on the
    /// in-memory store (one process only).
    #[arg(long, env = "OCCUPANCY_REDIS_URL")]
    pub redis_url: Option<String>,
    /// --redis-url names a Redis Cluster: one or more seed nodes,
    /// separated by commas.
    #[arg(long, env = "OCCUPANCY_REDIS_CLUSTER", requires = "redis_url")]
    pub redis_cluster: bool,
    /// Replicas that must acknowledge a write before it is answered (Redis
    /// WAIT), so that a failover loses no acknowledged write; default 1
    /// with --redis-cluster, else 0.
    #[arg(long, env = "OCCUPANCY_REDIS_REPLICA_ACKS", requires = "redis_url", value_parser = clap::value_parser!(u32).range(0..=16))]
    pub redis_replica_acks: Option<u32>,
    /// PEM file of the CA certificate(s) to trust for a rediss:// URL
    /// instead of the system's roots (a private CA).
    #[arg(long, env = "OCCUPANCY_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// Prefix of every Redis key, so deployments can share a Redis.
    #[arg(long, env = "OCCUPANCY_KEY_PREFIX", default_value = defaults::KEY_PREFIX)]
    pub key_prefix: String,
    /// Lease of a new session (1s to 10m); KeepAlive may change it per session.
    #[arg(long, env = "OCCUPANCY_SESSION_TTL", default_value = defaults::SESSION_TTL_ARG, value_parser = parse_session_ttl)]
    pub session_ttl: Duration,
    /// Bound on every Redis call and connection attempt; past it a call
    /// fails with UNAVAILABLE.
    #[arg(long, env = "OCCUPANCY_REDIS_TIMEOUT", default_value = defaults::REDIS_TIMEOUT_ARG, value_parser = parse_positive)]
    pub redis_timeout: Duration,
    /// How often each replica looks for expired sessions.
    #[arg(long, env = "OCCUPANCY_REAP_INTERVAL", default_value = defaults::REAP_INTERVAL_ARG, value_parser = parse_positive)]
    pub reap_interval: Duration,
    /// How often the store is probed for the health service.
    #[arg(long, env = "OCCUPANCY_HEALTH_INTERVAL", default_value = defaults::HEALTH_INTERVAL_ARG, value_parser = parse_positive)]
    pub health_interval: Duration,
    /// How long open calls may run after SIGTERM/SIGINT before they are cut.
    #[arg(long, env = "OCCUPANCY_SHUTDOWN_GRACE", default_value = defaults::SHUTDOWN_GRACE_ARG, value_parser = parse_grace)]
    pub shutdown_grace: Duration,
    /// Partitions the Redis state is split into, each under one hash tag
    /// (so a Redis Cluster can place and move each whole); default 16 with
    /// --redis-cluster, else 1. Fixed at first start: recorded in Redis.
    #[arg(long, env = "OCCUPANCY_PARTITIONS", requires = "redis_url", value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PARTITIONS)))]
    pub partitions: Option<u32>,
    /// Number of Redis event stream shards (with more than one partition,
    /// each partition has one stream instead).
    #[arg(long, env = "OCCUPANCY_EVENT_SHARDS", default_value_t = defaults::EVENT_SHARDS, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_EVENT_SHARDS)))]
    pub event_shards: u32,
    /// Changes each Redis event stream shard keeps, approximately.
    #[arg(long, env = "OCCUPANCY_STREAM_MAX_LEN", default_value_t = defaults::STREAM_MAX_LEN, value_parser = clap::value_parser!(u64).range(MIN_STREAM_MAX_LEN..))]
    pub stream_max_len: u64,
    /// A SubscribeOccupancy stream quiet for this long gets a heartbeat
    /// message (well under the idle timeouts of common proxies and load
    /// balancers, often 60 s).
    #[arg(long, env = "OCCUPANCY_STREAM_HEARTBEAT", default_value = defaults::STREAM_HEARTBEAT_ARG, value_parser = parse_positive)]
    pub stream_heartbeat: Duration,
    /// Log format.
    #[arg(long, env = "OCCUPANCY_LOG_FORMAT", default_value = defaults::LOG_FORMAT, value_parser = ["text", "json"])]
    pub log_format: String,
    /// Key file (TOML) of API keys and token signers; every call then needs
    /// a credential (health and reflection stay open). Reloaded on change
    /// and on SIGHUP. Unset: no access control.
    #[arg(long, env = "OCCUPANCY_AUTH_KEYS")]
    pub auth_keys: Option<PathBuf>,
    /// Serve without credentials on a non-loopback address (refused
    /// otherwise).
    #[arg(long, env = "OCCUPANCY_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
    /// TLS certificate chain (PEM); with --tls-key, gRPC is served over TLS
    /// only. Reloaded on change.
    #[arg(long, env = "OCCUPANCY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "OCCUPANCY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to (mTLS);
    /// needs --tls-cert.
    #[arg(long, env = "OCCUPANCY_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Whether this replica sends integration rules' webhooks. With
    /// `false` it still enqueues every change it sees (so nothing is lost
    /// while any replica runs) and leaves sending to the others, e.g. to
    /// keep outbound HTTP on replicas that may reach the targets.
    #[arg(long, env = "OCCUPANCY_WEBHOOK_DELIVERY", default_value_t = true, action = clap::ArgAction::Set)]
    pub webhook_delivery: bool,
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
    /// Quiet time after which a subscription stream gets a heartbeat.
    pub stream_heartbeat: Duration,
    /// Access control; `None`: every caller may do everything.
    pub auth: Option<Arc<crate::auth::Authenticator>>,
    /// Server TLS; `None`: plaintext.
    pub tls: Option<crate::tls::TlsConfig>,
    /// Whether this replica sends webhooks (it enqueues either way).
    pub webhook_delivery: bool,
}

impl Config {
    /// Defaults with the in-memory store.
    pub fn memory() -> Self {
        Self {
            store: StoreConfig::Memory,
            session_ttl: defaults::SESSION_TTL,
            reap_interval: defaults::REAP_INTERVAL,
            health_interval: defaults::HEALTH_INTERVAL,
            shutdown_grace: defaults::SHUTDOWN_GRACE,
            http_listen: None,
            stream_heartbeat: defaults::STREAM_HEARTBEAT,
            auth: None,
            tls: None,
            webhook_delivery: true,
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
                let urls = crate::store::redis::seed_urls(url, self.redis_cluster);
                if urls.is_empty() {
                    return Err("invalid --redis-url: --redis-cluster needs at least one seed node URL".into());
                }
                for u in &urls {
                    redis::Client::open(*u).map_err(|e| format!("invalid --redis-url {u:?}: {e}"))?;
                }
                crate::store::redis::keys::validate_prefix(&self.key_prefix)
                    .map_err(|e| format!("invalid --key-prefix: {e}"))?;
                if let Some(ca) = &self.redis_ca_file {
                    if !urls.iter().all(|u| u.starts_with("rediss://")) {
                        return Err("invalid --redis-ca-file: only used with a rediss:// --redis-url".into());
                    }
                    crate::store::redis::read_ca_file(ca).map_err(|e| format!("invalid --redis-ca-file: {e}"))?;
                }
                StoreConfig::Redis(RedisConfig {
                    tls_ca_file: self.redis_ca_file.clone(),
                    url: url.clone(),
                    cluster: self.redis_cluster,
                    key_prefix: self.key_prefix.clone(),
                    hash_tag: None,
                    replica_acks: self.redis_replica_acks.unwrap_or(if self.redis_cluster {
                        defaults::CLUSTER_REPLICA_ACKS
                    } else {
                        0
                    }),
                    timeout: self.redis_timeout,
                    default_ttl: self.session_ttl,
                    event_shards: self.event_shards,
                    partitions: self.partitions.unwrap_or(if self.redis_cluster {
                        defaults::CLUSTER_PARTITIONS
                    } else {
                        1
                    }),
                    stream_max_len: self.stream_max_len,
                })
            }
        };
        check_anonymous(&self.listen, self.auth_keys.is_some(), self.allow_anonymous)?;
        if let Some(http) = &self.http_listen {
            // the HTTP side serves the same data under the same keys
            check_anonymous(http, self.auth_keys.is_some(), self.allow_anonymous)?;
        }
        let auth = match &self.auth_keys {
            None => None,
            Some(path) => Some(Arc::new(
                crate::auth::Authenticator::from_file(path.clone()).map_err(|e| format!("invalid --auth-keys: {e}"))?,
            )),
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let tls = crate::tls::TlsConfig {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.tls_client_ca.clone(),
                };
                // load once now, so a bad file fails before anything binds
                crate::tls::ReloadingAcceptor::new(&tls)?;
                Some(tls)
            }
            _ => None,
        };
        Ok(Config {
            store,
            session_ttl: self.session_ttl,
            reap_interval: self.reap_interval,
            health_interval: self.health_interval,
            shutdown_grace: self.shutdown_grace,
            http_listen: self.http_listen,
            stream_heartbeat: self.stream_heartbeat,
            auth,
            tls,
            webhook_delivery: self.webhook_delivery,
        })
    }
}

/// The safe default: a service reachable from other hosts needs
/// credentials, unless the operator says anonymous access is meant.
///
/// # Errors
/// A message saying how to start anyway.
pub fn check_anonymous(listen: &SocketAddr, has_keys: bool, allow_anonymous: bool) -> Result<(), String> {
    if listen.ip().is_loopback() || has_keys || allow_anonymous {
        return Ok(());
    }
    Err(format!(
        "refusing to serve {listen} without access control: anyone who can reach it could change and read \
         every channel. Give --auth-keys FILE, or --allow-anonymous to serve without credentials anyway"
    ))
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
        assert_eq!(cfg.stream_heartbeat, Duration::from_secs(20));
        // the command line's defaults are Config::memory's
        let memory = Config::memory();
        assert_eq!(
            (cfg.session_ttl, cfg.reap_interval, cfg.health_interval),
            (memory.session_ttl, memory.reap_interval, memory.health_interval)
        );
        assert_eq!(
            (cfg.shutdown_grace, cfg.stream_heartbeat),
            (memory.shutdown_grace, memory.stream_heartbeat)
        );
        assert!(Cli::try_parse_from(["occupancy", "--stream-heartbeat", "0s"]).is_err());
        assert!(Cli::try_parse_from(["occupancy", "--session-ttl", "500ms"]).is_err());
        assert!(Cli::try_parse_from(["occupancy", "--session-ttl", "11m"]).is_err());
        assert!(Cli::try_parse_from(["occupancy", "serve", "--listen", "nope"]).is_err());
        assert!(Cli::try_parse_from(["occupancy", "serve", "--listen", "localhost"]).is_err());
        assert!(Cli::try_parse_from(["occupancy", "serve", "--listen", "localhost:99999"]).is_err());
        let cli = Cli::try_parse_from(["occupancy", "--listen", "localhost:50070"]).unwrap();
        assert!(cli.serve.listen.ip().is_loopback() && cli.serve.listen.port() == 50070);
        assert_eq!(parse_listen("0.0.0.0:1").unwrap(), SocketAddr::from(([0, 0, 0, 0], 1)));
        let cli = Cli::try_parse_from(["occupancy", "--redis-url", "redis://x", "--redis-ca-file", "/nope"]).unwrap();
        assert!(cli.serve.to_config().unwrap_err().contains("--redis-ca-file"));
        let cli = Cli::try_parse_from(["occupancy", "--redis-url", "rediss://x", "--redis-ca-file", "/nope"]).unwrap();
        let e = cli.serve.to_config().unwrap_err();
        assert!(e.contains("--redis-ca-file") && e.contains("/nope"), "{e}");
        let cli = Cli::try_parse_from(["occupancy", "--redis-url", "redis://x", "--key-prefix", "a{b"]).unwrap();
        assert!(cli.serve.to_config().unwrap_err().contains("key-prefix"));
        let cli = Cli::try_parse_from(["occupancy", "--http-listen", "8080"]).unwrap();
        assert_eq!(
            cli.serve.to_config().unwrap().http_listen,
            Some(([127, 0, 0, 1], 8080).into())
        );
        assert!(Cli::try_parse_from(["occupancy", "--http-listen", "nope"]).is_err());
        let cli = Cli::try_parse_from(["occupancy", "--http-listen", "localhost:8080"]).unwrap();
        let http = cli.serve.to_config().unwrap().http_listen.unwrap();
        assert!(http.ip().is_loopback() && http.port() == 8080);
        let cli = Cli::try_parse_from(["occupancy", "--redis-url", "nope://"]).unwrap();
        assert!(cli.serve.to_config().is_err());
    }

    fn redis_of(args: &[&str]) -> Result<RedisConfig, String> {
        let cli = Cli::try_parse_from(["occupancy"].iter().chain(args)).map_err(|e| e.to_string())?;
        match cli.serve.to_config()?.store {
            StoreConfig::Redis(r) => Ok(r),
            StoreConfig::Memory => Err("memory".into()),
        }
    }

    #[test]
    fn a_cluster_takes_seed_nodes_and_waits_for_a_replica_by_default() {
        let r = redis_of(&["--redis-url", "redis://a:7000, redis://b:7001", "--redis-cluster"]).unwrap();
        assert!(r.cluster);
        assert_eq!(r.replica_acks, defaults::CLUSTER_REPLICA_ACKS);
        assert_eq!(
            crate::store::redis::seed_urls(&r.url, r.cluster),
            ["redis://a:7000", "redis://b:7001"]
        );
        let r = redis_of(&[
            "--redis-url",
            "redis://a:7000",
            "--redis-cluster",
            "--redis-replica-acks",
            "0",
        ])
        .unwrap();
        assert_eq!(r.replica_acks, 0);
        let r = redis_of(&["--redis-url", "redis://a:7000"]).unwrap();
        assert!(!r.cluster);
        assert_eq!(r.replica_acks, 0, "one Redis: no replica to wait for unless asked");
        let r = redis_of(&["--redis-url", "redis://a:7000", "--redis-replica-acks", "2"]).unwrap();
        assert_eq!(r.replica_acks, 2);
        // refusals name the option
        assert!(redis_of(&["--redis-cluster"]).unwrap_err().contains("--redis-url"));
        let e = redis_of(&["--redis-url", " , ", "--redis-cluster"]).unwrap_err();
        assert!(e.contains("--redis-url") && e.contains("seed"), "{e}");
        let e = redis_of(&["--redis-url", "redis://a:7000,nope://b", "--redis-cluster"]).unwrap_err();
        assert!(e.contains("--redis-url") && e.contains("nope://b"), "{e}");
        // one URL with a comma is not a list without --redis-cluster
        assert!(redis_of(&["--redis-url", "redis://a:7000,redis://b:7001"]).is_err());
        let e = redis_of(&[
            "--redis-url",
            "rediss://a:7000,redis://b:7001",
            "--redis-cluster",
            "--redis-ca-file",
            "/nope",
        ])
        .unwrap_err();
        assert!(e.contains("--redis-ca-file"), "{e}");
        assert!(redis_of(&["--redis-url", "redis://a", "--redis-replica-acks", "17"]).is_err());
    }

    #[test]
    fn non_loopback_without_keys_needs_allow_anonymous() {
        let cli = Cli::try_parse_from(["occupancy", "--listen", "0.0.0.0:50051"]).unwrap();
        let e = cli.serve.to_config().unwrap_err();
        assert!(e.contains("--allow-anonymous") && e.contains("--auth-keys"), "{e}");
        let cli = Cli::try_parse_from(["occupancy", "--listen", "0.0.0.0:50051", "--allow-anonymous"]).unwrap();
        assert!(cli.serve.to_config().unwrap().auth.is_none());
        let cli = Cli::try_parse_from(["occupancy", "--listen", "[::1]:50051"]).unwrap();
        assert!(cli.serve.to_config().is_ok());
        let cli =
            Cli::try_parse_from(["occupancy", "--listen", "0.0.0.0:1", "--auth-keys", "/nonexistent.toml"]).unwrap();
        let e = cli.serve.to_config().unwrap_err();
        assert!(e.contains("--auth-keys") && e.contains("nonexistent"), "{e}");
        assert!(Cli::try_parse_from(["occupancy", "--tls-cert", "c.pem"]).is_err());
        let cli = Cli::try_parse_from(["occupancy", "--tls-cert", "/no/c.pem", "--tls-key", "/no/k.pem"]).unwrap();
        assert!(cli.serve.to_config().unwrap_err().contains("--tls-cert"));
    }
}
