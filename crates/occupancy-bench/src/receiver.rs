//! The webhook target of the `webhooks` scenario: an HTTP server in the
//! load generator's process that answers every POST with 200, counts the
//! events it carries, per rule, and keeps each rule's last connection count
//! per channel (a rule sends a channel's events one request at a time, in
//! order). It runs on a thread and runtime of its own, so that reading
//! bodies does not take turns with the Apply load on the generator's
//! (often single) runtime thread.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use tokio::sync::oneshot;

/// The parts of a body the receiver reads: a batch (`type: batch`) holds
/// `items`; any other type is one event, the body itself. Other fields are
/// skipped.
#[derive(Deserialize)]
struct Body {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "ruleId")]
    rule_id: String,
    #[serde(default)]
    items: Vec<Item>,
    #[serde(flatten)]
    single: Option<Item>,
}

/// One event's channel and connection count.
#[derive(Deserialize)]
struct Item {
    channel: String,
    data: ItemData,
}

#[derive(Deserialize)]
struct ItemData {
    metrics: ItemMetrics,
}

#[derive(Deserialize)]
struct ItemMetrics {
    connections: u32,
}

/// What the receiver has counted.
#[derive(Default)]
struct Counts {
    /// Events of requests with a `webhook-id` not seen before.
    events: AtomicU64,
    requests: AtomicU64,
    /// Requests whose `webhook-id` came before (a retried or handed-over
    /// batch); their events are not in `events`.
    repeats: AtomicU64,
    /// Bodies that did not parse (answered 200 all the same, so that they
    /// show here rather than in dead letters).
    bad: AtomicU64,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    per_rule: HashMap<String, u64>,
    /// Per rule, per channel: the connection count of the last event.
    connections: HashMap<String, HashMap<String, u32>>,
    last: Option<Instant>,
}

/// A running receiver; stops when dropped.
pub(crate) struct Receiver {
    addr: SocketAddr,
    counts: Arc<Counts>,
    _stop: oneshot::Sender<()>,
}

impl Receiver {
    /// Starts a receiver on a free loopback port.
    ///
    /// # Errors
    /// When no port can be bound or the thread cannot start.
    pub(crate) fn start() -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind the webhook receiver")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let state = counts.clone();
        std::thread::Builder::new()
            .name("webhook-receiver".into())
            .spawn(move || {
                let served = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|rt| {
                        rt.block_on(async move {
                            let listener = tokio::net::TcpListener::from_std(listener)?;
                            let app = Router::new()
                                .route("/", post(receive))
                                .layer(DefaultBodyLimit::max(16 << 20))
                                .with_state(state);
                            axum::serve(listener, app)
                                .with_graceful_shutdown(async {
                                    let _ = stopped.await;
                                })
                                .await?;
                            Ok(())
                        })
                    });
                if let Err(e) = served {
                    eprintln!("webhook receiver failed: {e:#}");
                }
            })?;
        Ok(Self {
            addr,
            counts,
            _stop: stop,
        })
    }

    /// The URL rules send to.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Events received (each batch once, however often it was sent).
    pub(crate) fn events(&self) -> u64 {
        self.counts.events.load(Ordering::Relaxed)
    }

    /// Requests received.
    pub(crate) fn requests(&self) -> u64 {
        self.counts.requests.load(Ordering::Relaxed)
    }

    /// Requests that repeated an earlier `webhook-id`.
    pub(crate) fn repeats(&self) -> u64 {
        self.counts.repeats.load(Ordering::Relaxed)
    }

    /// Bodies that did not parse.
    pub(crate) fn bad(&self) -> u64 {
        self.counts.bad.load(Ordering::Relaxed)
    }

    /// Events received from rule `id`.
    pub(crate) fn rule_events(&self, id: &str) -> u64 {
        self.seen().per_rule.get(id).copied().unwrap_or(0)
    }

    /// When the last event arrived.
    pub(crate) fn last_event(&self) -> Option<Instant> {
        self.seen().last
    }

    /// Per rule, per channel: the connection count of its last event.
    pub(crate) fn last_connections(&self) -> HashMap<String, HashMap<String, u32>> {
        self.seen().connections.clone()
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        // a panic while counting leaves counts that are still counts
        self.counts.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn receive(State(counts): State<Arc<Counts>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    counts.requests.fetch_add(1, Ordering::Relaxed);
    let Ok(parsed) = serde_json::from_slice::<Body>(&body) else {
        counts.bad.fetch_add(1, Ordering::Relaxed);
        return StatusCode::OK;
    };
    let items = if parsed.kind == "batch" {
        parsed.items
    } else {
        parsed.single.into_iter().collect()
    };
    let n = items.len() as u64;
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut seen = counts.seen.lock().unwrap_or_else(|e| e.into_inner());
    if !id.is_empty() && !seen.ids.insert(id) {
        counts.repeats.fetch_add(1, Ordering::Relaxed);
        return StatusCode::OK;
    }
    let last = seen.connections.entry(parsed.rule_id.clone()).or_default();
    for item in items {
        last.insert(item.channel, item.data.metrics.connections);
    }
    *seen.per_rule.entry(parsed.rule_id).or_default() += n;
    seen.last = Some(Instant::now());
    counts.events.fetch_add(n, Ordering::Relaxed);
    StatusCode::OK
}
