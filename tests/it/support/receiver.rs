//! A webhook receiver on a loopback port: records every request, verifies
//! its Standard Webhooks signature with the rule's secret (HMAC computed
//! here, independently of the service's code), and answers as told.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::Notify;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// 200 to everything.
    Ok,
    /// 500 to the first `n` requests from now, then 200.
    FailFirst(u32),
    /// Never answers (holds the request open).
    Hang,
    /// This status to everything.
    Status(u16),
    /// 200 after this many milliseconds.
    Delay(u64),
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// `webhook-id`.
    pub id: String,
    /// The parsed body.
    pub body: Value,
    /// Whether `webhook-signature` verified with the secret.
    pub valid: bool,
    /// When it arrived.
    pub at: Instant,
    /// The status answered.
    pub status: u16,
    /// Every header, for tests of custom headers.
    pub headers: HeaderMap,
}

#[derive(Debug)]
struct State {
    key: Mutex<Option<Vec<u8>>>,
    behaviour: Mutex<(Behaviour, u32)>,
    log: Mutex<Vec<Received>>,
    arrived: Notify,
}

/// The receiver; stops on drop.
#[derive(Debug)]
pub struct Receiver {
    /// Its URL (`http://127.0.0.1:PORT/hook`).
    pub url: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether `signature` (`v1,<b64> …`) is `key`'s HMAC of `id.ts.body`.
pub fn verify(key: &[u8], id: &str, ts: &str, body: &[u8], signature: &str) -> bool {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("hmac key");
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    signature
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| s == expected)
}

impl Receiver {
    /// Starts answering 200.
    pub async fn start() -> Self {
        let state = Arc::new(State {
            key: Mutex::new(None),
            behaviour: Mutex::new((Behaviour::Ok, 0)),
            log: Mutex::new(Vec::new()),
            arrived: Notify::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver addr");
        let s = state.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let s = s.clone();
            async move { handle(&s, headers, body).await }
        });
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("receiver");
        });
        Self {
            url: format!("http://{addr}/hook"),
            state,
            task,
        }
    }

    /// The rule's secret (`whsec_…`), to verify signatures with.
    pub fn set_secret(&self, secret: &str) {
        let key = STANDARD
            .decode(secret.strip_prefix("whsec_").expect("whsec_ secret"))
            .expect("base64 secret");
        *self.state.key.lock().unwrap() = Some(key);
    }

    /// Answers as `b` from now on.
    pub fn set(&self, b: Behaviour) {
        *self.state.behaviour.lock().unwrap() = (b, 0);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Received> {
        self.state.log.lock().unwrap().clone()
    }

    /// Events of the requests answered 2xx, in arrival order, each with
    /// its request's `webhook-id` (a batch's items share it).
    pub fn delivered(&self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for r in self.requests().into_iter().filter(|r| (200..300).contains(&r.status)) {
            match r.body.get("items").and_then(Value::as_array) {
                Some(items) => out.extend(items.iter().map(|i| (r.id.clone(), i.clone()))),
                None => out.push((r.id.clone(), r.body.clone())),
            }
        }
        out
    }

    /// Waits (at most `within`) until `check` holds for the delivered
    /// events; panics naming `what` otherwise.
    pub async fn wait_for(&self, within: Duration, what: &str, check: impl Fn(&[(String, Value)]) -> bool) {
        if !self.until(within, check).await {
            panic!(
                "timed out after {within:?} waiting for {what}; delivered: {:#?}",
                self.delivered().iter().map(|(_, e)| summary(e)).collect::<Vec<_>>()
            );
        }
    }

    /// Whether `check` comes to hold for the delivered events within
    /// `within`.
    pub async fn until(&self, within: Duration, check: impl Fn(&[(String, Value)]) -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let notified = self.state.arrived.notified();
            if check(&self.delivered()) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
        }
    }
}

/// `type channel connections` of an event, for failure messages.
pub fn summary(e: &Value) -> String {
    format!(
        "{} {} {}",
        e["type"].as_str().unwrap_or("?"),
        e["channel"].as_str().unwrap_or("?"),
        e["data"]["metrics"]["connections"]
    )
}

async fn handle(s: &State, headers: HeaderMap, body: Bytes) -> axum::response::Response {
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let (id, ts, sig) = (h("webhook-id"), h("webhook-timestamp"), h("webhook-signature"));
    let valid = s
        .key
        .lock()
        .unwrap()
        .as_ref()
        .is_some_and(|k| verify(k, &id, &ts, &body, &sig));
    let status = {
        let mut b = s.behaviour.lock().unwrap();
        match b.0 {
            Behaviour::Ok => 200,
            Behaviour::Status(code) => code,
            Behaviour::Hang => 0,
            Behaviour::Delay(_) => 200,
            Behaviour::FailFirst(n) => {
                b.1 += 1;
                if b.1 <= n {
                    500
                } else {
                    200
                }
            }
        }
    };
    let delay = match s.behaviour.lock().unwrap().0 {
        Behaviour::Delay(ms) => Some(Duration::from_millis(ms)),
        _ => None,
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    if status == 0 {
        // never answers; the service's timeout ends the request
        std::future::pending::<()>().await;
    }
    s.log.lock().unwrap().push(Received {
        id,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        valid,
        at: Instant::now(),
        status,
        headers,
    });
    s.arrived.notify_waiters();
    StatusCode::from_u16(status).expect("status").into_response()
}
