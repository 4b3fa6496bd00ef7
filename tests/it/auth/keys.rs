//! Key files and credentials outside the request path: reloads under
//! load, the binary's safe default and its key and token commands, and
//! the example key file.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use occupancy::auth::Authenticator;
use occupancy::proto::v1 as pb;
use tonic::transport::Channel;

use super::{attach, TTL};
use crate::support::auth::{authenticator, key_entry, key_file_text, server_with, with, As, KeyFile, DASH, FE};
use crate::support::{eventually, Harness};

/// Capabilities of a key that reads everything.
const READ_ALL: &str = r#"{ "*" = ["read"] }"#;

/// Reads `rooms:1` with `a`'s credential.
async fn read(a: &As) -> Result<(), tonic::Status> {
    a.r.clone()
        .get_occupancy(pb::GetOccupancyRequest {
            channel: "rooms:1".into(),
        })
        .await
        .map(drop)
}

/// Reloading the key file under load fails no call; a broken file keeps
/// the old keys; a new key in a good file works once loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_reload_under_load_fails_no_call() {
    let h = Harness::memory(TTL);
    let keys = KeyFile::new(&key_file_text(""));
    let auth = authenticator(&keys.path());
    let s = server_with(&h, auth.clone()).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for w in 0..4 {
        let mut a = with(&s, if w % 2 == 0 { FE } else { DASH }).await;
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let mut calls = 0u32;
            while !stop.load(Ordering::Relaxed) && calls < 1_000_000 {
                if w % 2 == 0 {
                    a.w.attach(attach(&format!("c{w}"), "rooms:1"))
                        .await
                        .expect("write during reload");
                } else {
                    read(&a).await.expect("read during reload");
                }
                calls += 1;
            }
            calls
        }));
    }
    // rewrites adding a key each time, picked up on change
    for round in 0..3 {
        keys.replace(&key_file_text(&key_entry(&format!("new{round}"), "n", READ_ALL)));
        let n = with(&s, &format!("new{round}:n")).await;
        eventually(Duration::from_secs(10), "the new key works", || async {
            read(&n).await.ok()
        })
        .await;
    }
    // a broken file: the old keys stay (new2 still works after the
    // watcher has certainly looked at it; the broken text is noticed as a
    // change, so a later good file is still picked up)
    let failed = auth.counters().reload_failures.load(Ordering::Relaxed);
    keys.replace("[keys.new2\nthis is not toml");
    let later = with(&s, "later:l").await;
    eventually(Duration::from_secs(10), "the broken file is tried", || {
        let tried = auth.counters().reload_failures.load(Ordering::Relaxed) > failed;
        async move { tried.then_some(()) }
    })
    .await;
    let n2 = with(&s, "new2:n").await;
    read(&n2).await.expect("the previous keys stay after a bad file");
    keys.replace(&key_file_text(&key_entry("later", "l", READ_ALL)));
    eventually(Duration::from_secs(10), "a good file after a bad one", || async {
        read(&later).await.ok()
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for l in load {
        total += l.await.expect("no call failed");
    }
    assert!(total > 0);
}

/// The real binary: a non-loopback address without keys is refused before
/// binding, naming the way out; `occupancy key` makes a key the service
/// takes, and the CLI sends it from `OCCUPANCY_KEY` or a token from
/// `--token`; health stays open without a credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_open_non_loopback_and_the_cli_sends_credentials() {
    use crate::support::process::{binary, Proc};
    use std::process::Command;
    let out = Command::new(binary())
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--allow-anonymous") && err.contains("--auth-keys"),
        "{err}"
    );

    let made = Command::new(binary())
        .args(["key", "ops", "-c", "*=read,report"])
        .output()
        .unwrap();
    assert!(made.status.success());
    let text = String::from_utf8(made.stdout).unwrap();
    let credential = text
        .lines()
        .nth(1)
        .and_then(|l| l.strip_prefix("# "))
        .expect("the credential line")
        .to_string();
    let keys = KeyFile::new(&text);
    let p = Proc::spawn(&["--auth-keys", keys.path().to_str().unwrap()]);
    let url = p.url();
    let get = |env: Option<(&str, &str)>, extra: &[&str]| {
        let mut c = Command::new(binary());
        c.args(["get", "rooms:1", "--json", "--endpoint", &url]).args(extra);
        c.env_remove("OCCUPANCY_KEY").env_remove("OCCUPANCY_TOKEN");
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let out = get(Some(("OCCUPANCY_KEY", &credential)), &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = get(None, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing credential"));
    let token = Command::new(binary())
        .args(["token", "-c", "rooms:*=read", "--ttl", "5m"])
        .env("OCCUPANCY_KEY", &credential)
        .output()
        .unwrap();
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).unwrap();
    let out = get(None, &["--token", token.trim()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // the token narrows the key: games:1 is not readable with it
    let mut c = Command::new(binary());
    let out = c
        .args(["get", "games:1", "--endpoint", &url, "--token", token.trim()])
        .env_remove("OCCUPANCY_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("games:1"));
    // health needs no credential
    let ch = Channel::from_shared(url.clone()).unwrap().connect().await.unwrap();
    let h = tonic_health::pb::health_client::HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health stays open");
    assert_eq!(
        h.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

/// The example key file in `deploy/` loads.
#[test]
fn the_example_key_file_loads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/auth-keys.example.toml");
    let auth = Authenticator::from_file(path).expect("the example key file loads");
    assert!(auth.enabled());
}
