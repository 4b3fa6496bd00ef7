//! Prometheus metrics of one replica (the `prometheus-client` crate), served
//! at `/metrics` on the HTTP listener.
//!
//! Names follow Prometheus' conventions: an `occupancy_` namespace, base
//! units (`_seconds`), `_total` on counters, and labels of bounded
//! cardinality only (method, route, status code; never a channel name or a
//! session id). Request counters and latencies are recorded as requests
//! finish; gauges of state held elsewhere (the store's totals, the hub's
//! subscriptions and queues, health) are read when scraped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};

use crate::domain::Totals;
use crate::error::code_name;

/// Labels of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// `GET`, `POST`, ... (others as `OTHER`).
    pub method: String,
    /// The route's pattern (`/channels/{channelId}`), or `unmatched`.
    pub route: String,
    /// The status code.
    pub status: u16,
}

/// Labels of an HTTP request's latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpRouteLabels {
    /// As [`HttpLabels::method`].
    pub method: String,
    /// As [`HttpLabels::route`].
    pub route: String,
}

/// Labels of a gRPC call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    /// `/occupancy.v1.OccupancyService/GetOccupancy`, or `unknown` for a
    /// path outside the served services.
    pub method: String,
    /// The gRPC status code name (`OK`, `INVALID_ARGUMENT`, ...).
    pub code: &'static str,
}

/// Labels of a gRPC call's latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcMethodLabels {
    /// As [`GrpcLabels::method`].
    pub method: String,
}

/// Labels of a Redis call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RedisCallLabels {
    /// What the call does (`apply`, `get`, `list`, ...): a fixed set.
    pub call: &'static str,
}

/// Labels of a failed Redis call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RedisErrorLabels {
    /// As [`RedisCallLabels::call`].
    pub call: &'static str,
    /// `unavailable` (timeouts, dropped or refused connections) or `other`.
    pub kind: &'static str,
}

/// Labels of an event shard.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabels {
    /// The shard's number (at most 256 of them).
    pub shard: u32,
}

/// Metrics of the store's Redis traffic. The Redis store records them
/// deep in its call paths, where no handle to a replica's [`Telemetry`]
/// reaches, so they are one set per process, exported by every registry
/// (a process runs one replica; in tests several replicas share them).
pub struct StoreMetrics {
    redis_calls: Family<RedisCallLabels, Histogram>,
    redis_errors: Family<RedisErrorLabels, Counter>,
    group_writes: Histogram,
    group_operations: Histogram,
    merged_reads: Histogram,
    partitions_elsewhere: Counter,
    event_lag: Family<ShardLabels, Histogram>,
}

impl std::fmt::Debug for StoreMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreMetrics").finish_non_exhaustive()
    }
}

/// The kinds of Redis call, for the `call` label.
pub const REDIS_CALLS: [&str; 12] = [
    "apply",
    "get",
    "list",
    "snapshot",
    "history",
    "reap",
    "keep_alive",
    "close",
    "session_state",
    "stats",
    "health",
    "integrations",
];

static STORE: LazyLock<StoreMetrics> = LazyLock::new(|| {
    // error series exist from the start at zero, so rates and alerts on
    // them work before the first error
    let redis_errors = Family::<RedisErrorLabels, Counter>::default();
    for call in REDIS_CALLS {
        for kind in ["unavailable", "other"] {
            let _created = redis_errors.get_or_create(&RedisErrorLabels { call, kind });
        }
    }
    StoreMetrics {
        redis_calls: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
        redis_errors,
        group_writes: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
        group_operations: Histogram::new(exponential_buckets(1.0, 2.0, 15)),
        merged_reads: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
        partitions_elsewhere: Counter::default(),
        event_lag: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_1, 2.0, 16))),
    }
});

/// The process's store metrics.
pub fn store() -> &'static StoreMetrics {
    &STORE
}

impl StoreMetrics {
    /// Records a Redis call of kind `call` that took `took`; `failed` is
    /// `Some(unavailable)` when it failed.
    pub fn redis_call(&self, call: &'static str, took: Duration, failed: Option<bool>) {
        self.redis_calls
            .get_or_create(&RedisCallLabels { call })
            .observe(took.as_secs_f64());
        if let Some(unavailable) = failed {
            let kind = if unavailable { "unavailable" } else { "other" };
            self.redis_errors.get_or_create(&RedisErrorLabels { call, kind }).inc();
        }
    }

    /// Records one group commit: `writes` requests merged into one call of
    /// `operations` operations.
    pub fn group_commit(&self, writes: usize, operations: usize) {
        self.group_writes.observe(writes as f64);
        self.group_operations.observe(operations as f64);
    }

    /// Records `n` partitions of a Redis Cluster write call that were not
    /// on the node the call reached, sent again on their own.
    pub fn partitions_elsewhere(&self, n: u64) {
        self.partitions_elsewhere.inc_by(n);
    }

    /// The partitions counted by [`StoreMetrics::partitions_elsewhere`] so
    /// far.
    pub fn partitions_elsewhere_total(&self) -> u64 {
        self.partitions_elsewhere.get()
    }

    /// Records one merged read of `keys` keys.
    pub fn merged_read(&self, keys: usize) {
        self.merged_reads.observe(keys as f64);
    }

    /// Records the time from a change's commit (its stream entry's time)
    /// to its hand-over to the hub, on `shard`.
    pub fn event_lag(&self, shard: u32, lag: Duration) {
        self.event_lag
            .get_or_create(&ShardLabels { shard })
            .observe(lag.as_secs_f64());
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "redis_call_duration_seconds",
            "Time of Redis calls made by this process, by kind of call",
            self.redis_calls.clone(),
        );
        registry.register(
            "redis_call_errors",
            "Failed Redis calls by kind of call and of failure",
            self.redis_errors.clone(),
        );
        for (name, help, metric) in [
            (
                "group_commit_writes",
                "Write requests merged into one Redis call (group commit)",
                &self.group_writes,
            ),
            (
                "group_commit_operations",
                "Operations in one merged Redis write call",
                &self.group_operations,
            ),
            ("merged_read_keys", "Keys read by one merged MGET", &self.merged_reads),
        ] {
            registry.register(name, help, metric.clone());
        }
        registry.register(
            "partitions_elsewhere",
            "Partitions of a Redis Cluster write call not on the node the call reached (the placement read from CLUSTER SLOTS was stale), sent again on their own",
            self.partitions_elsewhere.clone(),
        );
        registry.register(
            "event_lag_seconds",
            "Time from a change's commit in Redis to its hand-over to this replica's subscriptions, per event shard (includes clock skew between Redis and the replica)",
            self.event_lag.clone(),
        );
    }
}

/// Registers `metric` under `name` and hands it back, for the struct that
/// keeps it.
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    // 50 µs to about 6.5 s
    exponential_buckets(0.000_05, 2.0, 18)
}

/// The replica's metrics and the registry that serves them.
pub struct Telemetry {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_latency: Family<HttpRouteLabels, Histogram>,
    grpc_requests: Family<GrpcLabels, Counter>,
    grpc_latency: Family<GrpcMethodLabels, Histogram>,
    sessions_reaped: Counter,
    connections_reaped: Counter,
    reap_errors: Counter,
    serving: Gauge,
    serving_flag: AtomicBool,
    subscriptions: Gauge,
    queued_events: Gauge,
    events_published: Counter,
    active_channels: Gauge,
    connections: Gauge,
    presence_members: Gauge,
    sessions: Gauge,
    stats_errors: Counter,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    /// A registry with every metric of the service, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("occupancy");
        let r = &mut registry;
        let http_requests = registered(
            r,
            "http_requests",
            "HTTP requests answered, by method, route and status code",
            Family::default(),
        );
        let http_latency = registered(
            r,
            "http_request_duration_seconds",
            "Time to answer an HTTP request (to the response head for streams)",
            Family::<HttpRouteLabels, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets())),
        );
        let grpc_requests = registered(
            r,
            "grpc_requests",
            "gRPC calls answered, by method and status code",
            Family::default(),
        );
        let grpc_latency = registered(
            r,
            "grpc_request_duration_seconds",
            "Time to answer a gRPC call (to the response head for streams)",
            Family::<GrpcMethodLabels, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets())),
        );
        let [sessions_reaped, connections_reaped, reap_errors, events_published, stats_errors] = [
            (
                "sessions_reaped",
                "Sessions whose lease ran out, retired by this replica's reaper",
            ),
            (
                "connections_reaped",
                "Connections of expired sessions removed by this replica's reaper, with every attachment and presence member they held",
            ),
            ("reap_errors", "Reap rounds that failed"),
            ("hub_events", "Change events handed to this replica's subscriptions"),
            (
                "stats_read_errors",
                "Scrapes that could not read the app-wide totals from the store",
            ),
        ]
        .map(|(name, help)| registered(r, name, help, Counter::default()));
        let [serving, subscriptions, queued_events, active_channels, connections, presence_members, sessions] = [
            ("health_serving", "1 while the replica reports SERVING, 0 otherwise"),
            (
                "subscriptions",
                "Open subscriptions (gRPC streams and SSE) on this replica",
            ),
            (
                "queued_events",
                "Events waiting in subscriptions' inboxes on this replica",
            ),
            ("active_channels", "Channels with at least one connection (app-wide)"),
            ("channel_connections", "Sum of every channel's connections (app-wide)"),
            ("presence_members", "Sum of every channel's presence members (app-wide)"),
            ("sessions", "Open front end sessions (app-wide)"),
        ]
        .map(|(name, help)| registered(r, name, help, Gauge::default()));
        store().register(r);
        crate::integrations::metrics::metrics().register(r);
        Self {
            registry,
            http_requests,
            http_latency,
            grpc_requests,
            grpc_latency,
            sessions_reaped,
            connections_reaped,
            reap_errors,
            serving,
            serving_flag: AtomicBool::new(false),
            subscriptions,
            queued_events,
            events_published,
            active_channels,
            connections,
            presence_members,
            sessions,
            stats_errors,
        }
    }

    /// Records an answered HTTP request.
    pub fn http_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        let method = match method {
            "GET" | "POST" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "PATCH" => method,
            _ => "OTHER",
        };
        self.http_requests
            .get_or_create(&HttpLabels {
                method: method.to_string(),
                route: route.to_string(),
                status,
            })
            .inc();
        self.http_latency
            .get_or_create(&HttpRouteLabels {
                method: method.to_string(),
                route: route.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Records an answered gRPC call.
    pub fn grpc_request(&self, method: String, code: &'static str, took: Duration) {
        let labels = GrpcLabels { method, code };
        self.grpc_requests.get_or_create(&labels).inc();
        self.grpc_latency
            .get_or_create(&GrpcMethodLabels { method: labels.method })
            .observe(took.as_secs_f64());
    }

    /// Records one reap round's work.
    pub fn reaped(&self, sessions: usize, connections: usize) {
        self.sessions_reaped.inc_by(sessions as u64);
        self.connections_reaped.inc_by(connections as u64);
    }

    /// Records a failed reap round.
    pub fn reap_failed(&self) {
        self.reap_errors.inc();
    }

    /// Records the health state.
    pub fn set_serving(&self, serving: bool) {
        self.serving_flag.store(serving, Ordering::Relaxed);
        self.serving.set(i64::from(serving));
    }

    /// Whether the replica reports SERVING.
    pub fn serving(&self) -> bool {
        self.serving_flag.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of every metric, after updating the
    /// gauges read at scrape time: the hub's `(registrations, queued,
    /// published)` and the store's totals (`None` when they could not be
    /// read; the gauges keep their last value and an error is counted).
    pub fn encode(&self, hub: (usize, usize, u64), totals: Option<Totals>) -> String {
        let (registrations, queued, published) = hub;
        self.subscriptions.set(registrations as i64);
        self.queued_events.set(queued as i64);
        let seen = self.events_published.get();
        if published > seen {
            self.events_published.inc_by(published - seen);
        }
        match totals {
            Some(t) => {
                self.active_channels.set(t.active_channels as i64);
                self.connections.set(t.connections as i64);
                self.presence_members.set(t.presence_members as i64);
                self.sessions.set(t.sessions as i64);
            }
            None => {
                self.stats_errors.inc();
            }
        }
        let mut out = String::new();
        // writing into a String cannot fail
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The served gRPC services, for the method label (anything else is
/// `unknown`, so a client cannot grow the label set).
const GRPC_SERVICES: [&str; 6] = [
    "/occupancy.v1.OccupancyService/",
    "/occupancy.v1.ConnectionService/",
    "/occupancy.v1.IntegrationService/",
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

fn grpc_method_label(path: &str) -> String {
    let known = GRPC_SERVICES.iter().any(|s| {
        path.strip_prefix(s)
            .is_some_and(|m| !m.is_empty() && m.len() <= 64 && m.bytes().all(|b| b.is_ascii_alphanumeric()))
    });
    if known {
        path.to_string()
    } else {
        "unknown".to_string()
    }
}

/// A tower layer counting gRPC calls and timing them, for tonic's
/// `Server::layer`.
///
/// The status is read from the response head: tonic answers a failed call
/// with its status there ("trailers only"); a call whose head carries no
/// status succeeded as far as the handler goes (a stream that fails later
/// is counted as OK).
#[derive(Clone, Debug)]
pub struct GrpcMetricsLayer {
    telemetry: Arc<Telemetry>,
}

impl GrpcMetricsLayer {
    /// A layer recording into `telemetry`.
    pub fn new(telemetry: Arc<Telemetry>) -> Self {
        Self { telemetry }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            telemetry: self.telemetry.clone(),
        }
    }
}

/// The service made by [`GrpcMetricsLayer`].
#[derive(Clone, Debug)]
pub struct GrpcMetrics<S> {
    inner: S,
    telemetry: Arc<Telemetry>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = grpc_method_label(req.uri().path());
        let start = Instant::now();
        let fut = self.inner.call(req);
        let telemetry = self.telemetry.clone();
        Box::pin(async move {
            let res = fut.await;
            let code = match &res {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .map_or("OK", |v| code_name(tonic::Code::from_bytes(v.as_bytes()))),
                Err(_) => "INTERNAL",
            };
            telemetry.grpc_request(method, code, start.elapsed());
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(
            grpc_method_label("/occupancy.v1.OccupancyService/GetOccupancy"),
            "/occupancy.v1.OccupancyService/GetOccupancy"
        );
        assert_eq!(grpc_method_label("/evil.Service/X"), "unknown");
        assert_eq!(grpc_method_label("/occupancy.v1.OccupancyService/a/b"), "unknown");
        assert_eq!(grpc_method_label("/occupancy.v1.OccupancyService/"), "unknown");
    }

    #[test]
    fn encodes_counters_with_total_suffix() {
        let t = Telemetry::new();
        t.http_request("GET", "/stats", 200, Duration::from_millis(1));
        t.reaped(2, 5);
        let text = t.encode((1, 0, 0), Some(Totals::default()));
        assert!(text.contains("occupancy_http_requests_total{method=\"GET\",route=\"/stats\",status=\"200\"} 1"));
        assert!(text.contains("occupancy_sessions_reaped_total 2"));
        assert!(text.contains("occupancy_connections_reaped_total 5"));
        assert!(text.contains("occupancy_subscriptions 1"));
        assert!(
            text.contains("occupancy_redis_call_errors_total{call=\"apply\",kind=\"unavailable\"}"),
            "{text}"
        );
    }
}
