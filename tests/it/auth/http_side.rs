//! The HTTP side with a key file: the same credentials and capabilities
//! as gRPC.

use std::time::Duration;

use super::{attach, TTL};
use crate::support::auth::{http_server, key_file_text, with, KeyFile, ADMIN, DASH, FE};
use crate::support::Harness;

/// The HTTP side with a key file: the same credentials (`Authorization:
/// Bearer …`) and capabilities as gRPC, 401 for an unknown caller and 403
/// for a known one that may not; health stays open.
#[tokio::test]
async fn the_http_side_checks_the_same_credentials_and_capabilities() {
    let h = Harness::memory(TTL);
    let keys = KeyFile::new(&key_file_text(""));
    let s = http_server(&h, &keys).await;
    let mut fe = with(&s, FE).await;
    for (conn, ch) in [("c1", "rooms:1"), ("c2", "games:1")] {
        fe.w.attach(attach(conn, ch)).await.expect("attach");
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let base = s.http_url();
    let call = |method: reqwest::Method, path: &str, credential: Option<&str>, body: Option<&str>| {
        let mut r = http.request(method, format!("{base}{path}"));
        if let Some(c) = credential {
            r = r.header("authorization", format!("Bearer {c}"));
        }
        if let Some(b) = body {
            r = r.body(b.to_string());
        }
        r.send()
    };
    let get = reqwest::Method::GET;
    let status_code = |r: &reqwest::Response| r.status().as_u16();
    // (path, credential, expected status, expected error code)
    let cases: &[(&str, Option<&str>, u16, &str)] = &[
        ("/channels/rooms:1", None, 401, "UNAUTHENTICATED"),
        ("/channels/rooms:1", Some("dash:wrong"), 401, "UNAUTHENTICATED"),
        ("/channels/rooms:1", Some("nobody:x"), 401, "UNAUTHENTICATED"),
        ("/channels/rooms:1", Some(FE), 403, "PERMISSION_DENIED"),
        ("/channels/games:1", Some(DASH), 403, "PERMISSION_DENIED"),
        ("/channels", None, 401, "UNAUTHENTICATED"),
        ("/channels", Some(FE), 403, "PERMISSION_DENIED"),
        ("/stats", None, 401, "UNAUTHENTICATED"),
        ("/stats", Some(DASH), 403, "PERMISSION_DENIED"),
        ("/metrics", None, 401, "UNAUTHENTICATED"),
        ("/metrics", Some(DASH), 403, "PERMISSION_DENIED"),
        (
            "/channels/games:1/occupancy/stream",
            Some(DASH),
            403,
            "PERMISSION_DENIED",
        ),
        ("/occupancy/stream?prefix=", Some(DASH), 403, "PERMISSION_DENIED"),
        ("/occupancy/stream?prefix=rooms:", None, 401, "UNAUTHENTICATED"),
    ];
    for (path, credential, want, code) in cases {
        let r = call(get.clone(), path, *credential, None).await.unwrap();
        assert_eq!(status_code(&r), *want, "{path} as {credential:?}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], *code, "{path} as {credential:?}: {body}");
        // the key id at most, never the secret
        let text = body.to_string();
        assert!(!text.contains("-secret") && !text.contains("wrong\""), "{body}");
    }
    // a batch with one forbidden channel is refused whole
    let r = call(
        reqwest::Method::POST,
        "/channels/batch",
        Some(DASH),
        Some(r#"{"channels":["rooms:1","games:1"]}"#),
    )
    .await
    .unwrap();
    assert_eq!(status_code(&r), 403);
    // allowed: the channel, a listing of only the readable channels, the
    // totals for a key that reads everything, a stream inside its scope
    let r = call(get.clone(), "/channels/rooms:1", Some(DASH), None).await.unwrap();
    assert_eq!(status_code(&r), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["channelId"], "rooms:1");
    assert_eq!(body["status"]["occupancy"]["metrics"]["connections"], 1);
    let r = call(get.clone(), "/channels?by=id", Some(DASH), None).await.unwrap();
    assert_eq!(status_code(&r), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!(["rooms:1"])
    );
    let r = call(get.clone(), "/channels?by=id", Some(ADMIN), None).await.unwrap();
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!(["games:1", "rooms:1"])
    );
    let r = call(get.clone(), "/stats", Some(ADMIN), None).await.unwrap();
    assert_eq!(status_code(&r), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["connections"], 2);
    let r = call(get.clone(), "/metrics", Some(ADMIN), None).await.unwrap();
    assert_eq!(status_code(&r), 200);
    let r = call(get.clone(), "/channels/rooms:1/occupancy/stream", Some(DASH), None)
        .await
        .unwrap();
    assert_eq!(status_code(&r), 200);
    drop(r);
    // open: health, the OpenAPI document and the page
    for path in ["/health", "/openapi.json", "/"] {
        let r = call(get.clone(), path, None, None).await.unwrap();
        assert_eq!(status_code(&r), 200, "{path}");
    }
    s.stop().await.unwrap();
}
