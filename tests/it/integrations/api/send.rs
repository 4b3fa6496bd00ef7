//! TestRule against a real webhook receiver on a loopback port: the
//! Standard Webhooks headers, a signature checked with our own HMAC, the
//! body's shape per mode, and what a failing or absent target answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use occupancy::proto::v1 as pb;
use sha2::Sha256;
use tokio::sync::mpsc;

use super::{client, create, TTL};
use crate::support::Harness;

both_stores!(a_test_send_is_signed_as_standard_webhooks_say);

/// One request a [`Receiver`] got.
#[derive(Debug)]
pub(super) struct Received {
    pub(super) headers: http::HeaderMap,
    pub(super) body: bytes::Bytes,
}

/// A webhook target on a loopback port: hands every request it gets to
/// the test and answers `status`.
pub(super) struct Receiver {
    pub(super) url: String,
    pub(super) status: Arc<AtomicU16>,
    got: mpsc::UnboundedReceiver<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub(super) async fn start() -> Self {
        let (tx, got) = mpsc::unbounded_channel();
        let status = Arc::new(AtomicU16::new(204));
        let answer = status.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: http::HeaderMap, body: bytes::Bytes| {
                let tx = tx.clone();
                let answer = answer.clone();
                async move {
                    let _ = tx.send(Received { headers, body });
                    http::StatusCode::from_u16(answer.load(Ordering::Relaxed)).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, status, got, task }
    }

    pub(super) async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(10), self.got.recv())
            .await
            .expect("the receiver got a request within 10 s")
            .expect("receiver running")
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {:?}", r.headers))
        .to_str()
        .unwrap()
}

/// Whether `r`'s `webhook-signature` holds the signature of its id,
/// timestamp and body under `secret`, computed here (HMAC-SHA256 of
/// `id.timestamp.body`, base64, as Standard Webhooks specify).
fn signed_with(r: &Received, secret: &str) -> bool {
    let id = header(r, "webhook-id");
    let ts = header(r, "webhook-timestamp");
    let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&r.body);
    let want = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    header(r, "webhook-signature").split(' ').any(|s| s == want)
}

/// Checks the Standard Webhooks headers of `r` against `secret`.
fn verify(r: &Received, secret: &str) {
    let sent: i64 = header(r, "webhook-timestamp").parse().expect("timestamp in seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - sent).abs() < 60, "timestamp {sent} vs now {now}");
    assert!(
        signed_with(r, secret),
        "{:?} is not signed with the rule's secret",
        r.headers
    );
}

async fn a_test_send_is_signed_as_standard_webhooks_say(h: Harness) {
    let s = h.server().await;
    let mut c = client(&s).await;
    let mut rx = Receiver::start().await;
    let rule = c
        .create_rule(pb::CreateRuleRequest {
            headers: HashMap::from([("x-app".to_string(), "demo".to_string())]),
            ..create(&rx.url)
        })
        .await
        .unwrap()
        .into_inner()
        .rule
        .unwrap();
    let test = |id: &str, channel: &str| pb::TestRuleRequest {
        id: id.into(),
        channel: channel.into(),
    };
    let answer = c.test_rule(test(&rule.id, "rooms:1")).await.unwrap().into_inner();
    assert!(answer.delivered, "{answer:?}");
    assert_eq!((answer.status_code, answer.error.as_str()), (204, ""));
    assert!(answer.latency_ms < 10_000);
    let got = rx.next().await;
    verify(&got, &rule.secret);
    assert_eq!(header(&got, "webhook-id"), format!("msg_{}_0-0", rule.id));
    assert_eq!(header(&got, "content-type"), "application/json");
    assert_eq!(header(&got, "x-app"), "demo");
    assert!(header(&got, "user-agent").starts_with("occupancy-webhooks/"));
    let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["type"], "channel.occupancy");
    assert_eq!(body["channel"], "rooms:1");
    assert_eq!(body["ruleId"], rule.id.as_str());
    assert_eq!(body["id"], format!("{}:0-0", rule.id));
    assert_eq!(body["data"]["metrics"]["connections"], 0);

    // a signature made with another secret does not verify
    let other = format!("whsec_{}", STANDARD.encode([1u8; 24]));
    assert!(!signed_with(&got, &other));

    // a failing target: not delivered, with its status; nothing is retried
    rx.status.store(500, Ordering::Relaxed);
    let answer = c.test_rule(test(&rule.id, "")).await.unwrap().into_inner();
    assert!(!answer.delivered);
    assert_eq!((answer.status_code, answer.error.as_str()), (500, "HTTP 500"));
    let got = rx.next().await;
    let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["channel"], "test", "the default channel");
    assert!(rx.got.try_recv().is_err(), "one request per test");

    // a batched rule's test has its batch shape, and a secret it was given
    rx.status.store(200, Ordering::Relaxed);
    let secret = format!("whsec_{}", STANDARD.encode([9u8; 32]));
    let batched = c
        .create_rule(pb::CreateRuleRequest {
            mode: pb::DeliveryMode::Batched as i32,
            secret: Some(secret.clone()),
            ..create(&rx.url)
        })
        .await
        .unwrap()
        .into_inner()
        .rule
        .unwrap();
    let answer = c.test_rule(test(&batched.id, "lobby")).await.unwrap().into_inner();
    assert!(answer.delivered && answer.status_code == 200, "{answer:?}");
    let got = rx.next().await;
    verify(&got, &secret);
    let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["type"], "batch");
    assert_eq!(body["items"][0]["channel"], "lobby");

    // nothing listening: no status, the reason
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let nowhere = c
        .create_rule(create(&format!("http://{dead}/hook")))
        .await
        .unwrap()
        .into_inner()
        .rule
        .unwrap();
    let answer = c.test_rule(test(&nowhere.id, "")).await.unwrap().into_inner();
    assert!(!answer.delivered);
    assert_eq!(answer.status_code, 0);
    assert!(answer.error.contains("connect"), "{answer:?}");
}
