//! The HTTP side against both stores: REST answers equal gRPC's for the
//! same state, paging, JSON errors, app-wide totals, server-sent events
//! with resume on another replica, and Prometheus metrics.

mod rest;
mod sse;
mod totals;

use std::time::Duration;

use serde_json::Value;

use crate::support::TestServer;

/// Lease of sessions that are left to expire.
const TTL: Duration = Duration::from_millis(800);

const LONG_TTL_MS: u32 = 60_000;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client")
}

/// GETs `path` and returns the status, the Link header and the JSON body.
async fn get(s: &TestServer, path: &str) -> (u16, Option<String>, Value) {
    let r = client()
        .get(format!("{}{path}", s.http_url()))
        .send()
        .await
        .expect("http get");
    let status = r.status().as_u16();
    let link = r.headers().get("link").map(|v| v.to_str().expect("link").to_string());
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
    let body: Value = r.json().await.expect("json body");
    assert_eq!(ct.as_deref(), Some("application/json"), "{path}");
    (status, link, body)
}
