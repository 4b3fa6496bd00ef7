//! The client subcommands of the `occupancy` binary: `get`, `list`,
//! `watch` and `stats`, for people (tables) and scripts (`--json`, one
//! object a line), and `health`, a probe for container health checks.
//!
//! Exit codes: 0 success, 1 other errors, 2 bad usage or an argument the
//! service refused (INVALID_ARGUMENT), 3 the service could not be reached
//! (no connection, or no answer in time), 4 the service answered but its
//! store (Redis) is unavailable. `health` exits 0 when SERVING and 1
//! otherwise, as container and Kubernetes probes expect.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use occupancy_client::proto;
use occupancy_client::{Client, Error, Followed};
use serde_json::json;
use tonic::Code;

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

/// `occupancy get`.
#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// Channels to read (up to 1,000).
    #[arg(required = true)]
    pub channels: Vec<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: Target,
}

/// `occupancy list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Only channels starting with this.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// `value` (with metrics) or `id` (names only).
    #[arg(long, default_value = "value", value_parser = ["value", "id"])]
    pub by: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: Target,
}

/// `occupancy watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Channels to follow.
    pub channels: Vec<String>,
    /// Also follow every channel under this prefix.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Follow every channel (every active one in the first table, and any
    /// that appears later).
    #[arg(long, conflicts_with = "prefix")]
    pub all: bool,
    /// Hold back changes for up to this many ms (zero/non-zero flips are
    /// always shown at once).
    #[arg(long, default_value_t = 0)]
    pub debounce_ms: u32,
    /// Exit after this many events (0: run until interrupted).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: Target,
}

/// `occupancy stats`.
#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: Target,
}

/// `occupancy stats`: the app-wide totals; returns the exit code.
pub async fn stats(args: StatsArgs) -> i32 {
    let client = match client(&args.target) {
        Ok(c) => c,
        Err(e) => return fail(&e, &args.target),
    };
    match client.stats().await {
        Ok(s) => {
            if args.target.json {
                println!(
                    "{}",
                    json!({
                        "activeChannels": s.active_channels,
                        "connections": s.connections,
                        "presenceMembers": s.presence_members,
                        "sessions": s.sessions,
                    })
                );
            } else {
                println!("active channels   {}", s.active_channels);
                println!("connections       {}", s.connections);
                println!("presence members  {}", s.presence_members);
                println!("sessions          {}", s.sessions);
            }
            0
        }
        Err(e) => fail(&e, &args.target),
    }
}

/// `occupancy health`.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// The replica to check: HOST:PORT, http://HOST:PORT or https://HOST:PORT.
    #[arg(long, env = "OCCUPANCY_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// The service to ask about (grpc.health.v1 name); empty for the whole
    /// server.
    #[arg(long, default_value = "")]
    pub service: String,
    /// Give up after this long (counts as not healthy).
    #[arg(long, default_value = crate::config::defaults::HEALTH_CHECK_TIMEOUT_ARG, value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Exit 0 whenever the replica answers, SERVING or not: a liveness
    /// probe, so that a Redis outage (NOT_SERVING) takes replicas out of
    /// load balancing (readiness) without restarting them all.
    #[arg(long)]
    pub live: bool,
}

fn client(t: &Target) -> Result<Client, Error> {
    let mut b = Client::builder().request_timeout(t.timeout).attempts(2);
    for e in &t.endpoint {
        b = b.endpoint(e.trim());
    }
    b = t.auth.apply(b).map_err(Error::InvalidEndpoint)?;
    b.connect()
}

/// Prints `err` and returns the exit code for it.
fn fail(err: &Error, target: &Target) -> i32 {
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

/// `occupancy health`: asks one replica's grpc.health.v1 service; returns
/// 0 when it answers SERVING (any status with `--live`) and 1 otherwise
/// (not serving, no answer, or a bad endpoint), printing the status or
/// the reason.
pub async fn health(args: HealthArgs) -> i32 {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
    let url = match occupancy_client::endpoint_url(&args.endpoint) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let mut endpoint = match tonic::transport::Endpoint::from_shared(url.clone()) {
        Ok(e) => e.connect_timeout(args.timeout).timeout(args.timeout),
        Err(e) => {
            eprintln!("error: invalid endpoint {url}: {e}");
            return 1;
        }
    };
    if url.starts_with("https://") {
        match endpoint.tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots()) {
            Ok(e) => endpoint = e,
            Err(e) => {
                eprintln!("error: {url}: {e}");
                return 1;
            }
        }
    }
    let check = async {
        let channel = endpoint.connect().await.map_err(|e| format!("cannot connect: {e}"))?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await
            .map(|r| r.into_inner().status)
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    };
    match tokio::time::timeout(args.timeout, check).await {
        Ok(Ok(status)) if status == ServingStatus::Serving as i32 => {
            println!("SERVING");
            0
        }
        Ok(Ok(status)) => {
            let name = ServingStatus::try_from(status).map_or("UNKNOWN", |s| s.as_str_name());
            println!("{name}");
            i32::from(!args.live)
        }
        Ok(Err(e)) => {
            eprintln!("error: {url}: {e}");
            1
        }
        Err(_) => {
            eprintln!("error: {url}: no answer within {:?}", args.timeout);
            1
        }
    }
}

const COLUMNS: [&str; 9] = [
    "connections",
    "publishers",
    "subscribers",
    "presenceConnections",
    "presenceMembers",
    "presenceSubscribers",
    "objectPublishers",
    "objectSubscribers",
    "presenceClients",
];

fn values(m: &proto::Metrics) -> [u32; 9] {
    [
        m.connections,
        m.publishers,
        m.subscribers,
        m.presence_connections,
        m.presence_members,
        m.presence_subscribers,
        m.object_publishers,
        m.object_subscribers,
        m.presence_clients,
    ]
}

fn metrics_json(m: &proto::Metrics) -> serde_json::Value {
    let mut o = serde_json::Map::new();
    for (k, v) in COLUMNS.iter().zip(values(m)) {
        o.insert((*k).to_string(), json!(v));
    }
    serde_json::Value::Object(o)
}

/// Ably's ChannelDetails as JSON.
fn details_json(d: &proto::ChannelDetails) -> serde_json::Value {
    match &d.status {
        None => json!({ "channelId": d.channel_id }),
        Some(s) => {
            let m = s.occupancy.as_ref().and_then(|o| o.metrics).unwrap_or_default();
            json!({
                "channelId": d.channel_id,
                "status": { "isActive": s.is_active, "occupancy": { "metrics": metrics_json(&m) } }
            })
        }
    }
}

const SHORT: [&str; 9] = [
    "CONN",
    "PUB",
    "SUB",
    "PRES_CONN",
    "PRES_MEMB",
    "PRES_SUB",
    "OBJ_PUB",
    "OBJ_SUB",
    "PRES_CLI",
];

fn table(rows: &[(String, Option<proto::Metrics>, String)], extra: Option<&str>) -> String {
    let width = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(7).max(7);
    let mut out = format!("{:width$}", "CHANNEL");
    for h in SHORT {
        out.push_str(&format!(" {h:>9}"));
    }
    if let Some(e) = extra {
        out.push_str(&format!("  {e}"));
    }
    out.push('\n');
    for (name, m, tail) in rows {
        out.push_str(&format!("{name:width$}"));
        if let Some(m) = m {
            for v in values(m) {
                out.push_str(&format!(" {v:>9}"));
            }
        }
        if !tail.is_empty() {
            out.push_str(&format!("  {tail}"));
        }
        out.push('\n');
    }
    out
}

fn details_table(details: &[proto::ChannelDetails]) -> String {
    let rows: Vec<_> = details
        .iter()
        .map(|d| {
            let m = d
                .status
                .as_ref()
                .and_then(|s| s.occupancy.as_ref())
                .and_then(|o| o.metrics);
            (d.channel_id.clone(), Some(m.unwrap_or_default()), String::new())
        })
        .collect();
    table(&rows, None)
}

/// `occupancy get`: returns the exit code.
pub async fn get(args: GetArgs) -> i32 {
    let client = match client(&args.target) {
        Ok(c) => c,
        Err(e) => return fail(&e, &args.target),
    };
    match client.batch_get(&args.channels).await {
        Ok(details) => {
            if args.target.json {
                for d in &details {
                    println!("{}", details_json(d));
                }
            } else {
                print!("{}", details_table(&details));
            }
            0
        }
        Err(e) => fail(&e, &args.target),
    }
}

/// `occupancy list`: returns the exit code.
pub async fn list(args: ListArgs) -> i32 {
    let client = match client(&args.target) {
        Ok(c) => c,
        Err(e) => return fail(&e, &args.target),
    };
    let by_value = args.by == "value";
    match client.list_all(&args.prefix, by_value).await {
        Ok(channels) => {
            if args.target.json {
                for d in &channels {
                    println!("{}", details_json(d));
                }
            } else if by_value {
                print!("{}", details_table(&channels));
            } else {
                for d in &channels {
                    println!("{}", d.channel_id);
                }
            }
            0
        }
        Err(e) => fail(&e, &args.target),
    }
}

fn clock(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}.{:03} UTC", ms.rem_euclid(1000))
}

/// Shortest time between two redraws of the `watch` table: a burst of
/// changes is drawn once, then once more after the last change.
const REDRAW_EVERY: Duration = Duration::from_millis(200);

/// `occupancy watch`: returns the exit code.
///
/// Follows the subscription with the client crate's reconnect-and-resume
/// loop ([`Client::follow`]): a replica that goes away is left for the
/// next endpoint, resuming where the stream was. Three failures in a row
/// (or a refused argument, at once) end the command with the exit code of
/// the last one.
///
/// The table is drawn first once the snapshot has arrived (the stream
/// says it is live, even when nothing matched: then it has a header only;
/// or a second into a snapshot still arriving), then at most every
/// [`REDRAW_EVERY`] while changes arrive, and always once more after the
/// last one, so it never shows a stale row.
pub async fn watch(args: WatchArgs) -> i32 {
    if args.channels.is_empty() && args.prefix.is_empty() && !args.all {
        eprintln!("error: give channels to watch, --prefix or --all");
        return EXIT_USAGE;
    }
    let client = match client(&args.target) {
        Ok(c) => c,
        Err(e) => return fail(&e, &args.target),
    };
    let mut follow = client.follow(proto::SubscribeOccupancyRequest {
        channels: args.channels.clone(),
        prefix: args.prefix.clone(),
        categories: vec![],
        debounce_ms: args.debounce_ms,
        resume_from: String::new(),
        all_channels: args.all,
    });
    let mut state: HashMap<String, (proto::Metrics, i64)> = HashMap::new();
    let mut seen: u64 = 0;
    let mut failures = 0u32;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    // when the table must be drawn next, if it shows anything out of date
    let mut last_draw: Option<Instant> = None;
    let mut due: Option<tokio::time::Instant> = None;
    // a busy system never stops sending: the first table is drawn within
    // a second of subscribing in any case
    let mut first_by = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let item = tokio::select! {
            item = follow.next() => item,
            () = sleep_until(due), if due.is_some() => {
                due = None;
                last_draw = Some(Instant::now());
                draw(&state, tty);
                continue;
            }
        };
        let e = match item {
            Some(Followed::Event(e)) => e,
            Some(Followed::Live) => {
                if !args.target.json && last_draw.is_none() {
                    due = None;
                    last_draw = Some(Instant::now());
                    draw(&state, tty);
                }
                continue;
            }
            Some(Followed::Failed(e) | Followed::ResumeRefused(e)) => {
                // a refused argument ends at once; anything else (e.g. the
                // store is down, so the snapshot failed) after three tries
                // in a row
                failures += 1;
                if e.code() == Some(Code::InvalidArgument) || failures >= 3 {
                    return fail(&e, &args.target);
                }
                first_by = tokio::time::Instant::now() + Duration::from_secs(1);
                continue;
            }
            None => return 1,
        };
        failures = 0;
        seen += 1;
        let m = e.metrics.unwrap_or_default();
        let last = args.count > 0 && seen >= args.count;
        if args.target.json {
            println!(
                "{}",
                json!({
                    "id": e.id, "name": e.name, "channel": e.channel,
                    "timestampMs": e.timestamp_ms, "metrics": metrics_json(&m)
                })
            );
            let _ = std::io::stdout().flush();
        } else {
            state.insert(e.channel.clone(), (m, e.timestamp_ms));
            if last {
                draw(&state, tty);
            } else if let Some(at) = last_draw {
                // drawn before: redraw at once if the last draw is old
                // enough, else when it is; never later than that
                let next = tokio::time::Instant::from_std(at + REDRAW_EVERY);
                due = Some(due.map_or(next, |d| d.min(next)));
            } else {
                // still in the snapshot: draw once it stops arriving
                due = Some((tokio::time::Instant::now() + REDRAW_EVERY).min(first_by));
            }
        }
        if last {
            return 0;
        }
    }
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn draw(state: &HashMap<String, (proto::Metrics, i64)>, tty: bool) {
    let mut rows: Vec<_> = state.iter().collect();
    rows.sort_by(|a, b| b.1 .0.connections.cmp(&a.1 .0.connections).then(a.0.cmp(b.0)));
    let rows: Vec<_> = rows
        .into_iter()
        .map(|(n, (m, ts))| (n.clone(), Some(*m), clock(*ts)))
        .collect();
    let now = crate::domain::events::wall_ms();
    let mut out = String::new();
    if tty {
        out.push_str("\x1b[2J\x1b[H");
    }
    out.push_str(&format!("occupancy at {}, busiest first\n", clock(now)));
    out.push_str(&table(&rows, Some("LAST CHANGE")));
    if !tty {
        out.push('\n');
    }
    print!("{out}");
    let _ = std::io::stdout().flush();
}
