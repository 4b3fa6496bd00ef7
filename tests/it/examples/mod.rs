//! The Python and Node examples against a live server, and the proto lint.
//!
//! Each test installs what it needs when it is missing (see
//! `support::deps`), and skips only when that install failed and the
//! package registry cannot be reached.

mod clients;

use std::time::Duration;

use occupancy::proto::v1 as pb;
use pb::Mode;
use tokio::process::Command;

use self::clients::{Client, Stream};
use crate::fixture::{attach_op, Fx};
use crate::support::auth::{key_file_text, KeyFile};
use crate::support::command::run;
use crate::support::deps::{buf, node_modules, python_deps, repo};
use crate::support::process::Proc;

/// Bound of one run of an example client or of buf, and of the wait for
/// each line a streaming client prints.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_gets_lists_and_subscribes() {
    let Some(deps) = python_deps().await else { return };
    exercise(&Client::Python(deps)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_client_gets_lists_and_subscribes() {
    if !node_modules().await {
        return;
    }
    exercise(&Client::Node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_sends_its_key() {
    let Some(deps) = python_deps().await else { return };
    credentials(&Client::Python(deps)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_client_sends_its_key() {
    if !node_modules().await {
        return;
    }
    credentials(&Client::Node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proto_passes_buf_lint() {
    let Some(buf) = buf().await else { return };
    let mut cmd = Command::new(buf);
    cmd.arg("lint").current_dir(repo());
    let out = run(cmd, CLIENT_TIMEOUT).await;
    assert!(
        out.ok(),
        "buf lint (buf.yaml, STANDARD rules) failed:\n{}",
        out.describe()
    );
}

/// The same session for either client: get, list over several pages,
/// subscribe to named channels and to a prefix.
async fn exercise(client: &Client) {
    // leases outlive the test however slow the clients start
    let proc = Proc::spawn(&["--session-ttl", "10m"]);
    let addr = proc.addr.to_string();
    let fx = Fx::connect(&proc.url()).await;

    // get: one channel (GetOccupancy), then several (BatchGetOccupancy)
    fx.attach("fe", "c1", "rooms:a", &[Mode::Publish, Mode::Presence]).await;
    fx.attach("fe", "c2", "rooms:a", &[Mode::Subscribe]).await;
    fx.enter("fe", "c1", "rooms:a", "alice").await;
    let rooms_a = [
        ("connections", 2),
        ("publishers", 1),
        ("subscribers", 1),
        ("presenceConnections", 1),
        ("presenceMembers", 1),
        ("presenceSubscribers", 0),
        ("objectPublishers", 0),
        ("objectSubscribers", 0),
        ("presenceClients", 1),
    ];
    let got = client.lines(&addr, &["get", "rooms:a"]).await;
    assert_eq!(got.len(), 1, "{} get printed {got:?}", client.name());
    assert_details(&got[0], "rooms:a", true, &rooms_a);
    let got = client.lines(&addr, &["get", "rooms:none", "rooms:a"]).await;
    assert_eq!(got.len(), 2, "{} get of two printed {got:?}", client.name());
    assert_details(
        &got[0],
        "rooms:none",
        false,
        &[("connections", 0), ("presenceMembers", 0)],
    );
    assert_details(&got[1], "rooms:a", true, &rooms_a);

    // list: 150 channels are two pages at the default page size (100)
    let ops = (0..150)
        .map(|i| attach_op(&format!("l{i}"), &format!("many:{i:03}"), &[Mode::Subscribe]))
        .collect();
    assert_eq!(fx.apply("fe", ops).await.len(), 150);
    let want: Vec<String> = (0..150).map(|i| format!("many:{i:03}")).collect();
    for args in [
        &["list", "--prefix", "many:"][..],
        &["list", "--prefix", "many:", "--limit", "7"],
    ] {
        let listed = client.lines(&addr, args).await;
        assert_eq!(
            ids(&listed),
            want,
            "{} {args:?}: every channel once, in name order",
            client.name()
        );
        for d in &listed {
            let id = str_at(d, &["channelId"]);
            assert_details(
                d,
                &id,
                true,
                &[("connections", 1), ("subscribers", 1), ("publishers", 0)],
            );
        }
    }
    let everything = client.lines(&addr, &["list"]).await;
    let mut want_all = want.clone();
    want_all.push("rooms:a".into()); // byte order: 'm' < 'r'
    assert_eq!(ids(&everything), want_all, "{} list without a prefix", client.name());

    // subscribe: the snapshot, then a change made while the client runs
    let mut sub = Stream::start(client, &addr, &["subscribe", "rooms:a", "--count", "2"]);
    let snapshot = sub.next().await;
    assert_event(&snapshot, "rooms:a", &[("connections", 2), ("presenceMembers", 1)]);
    fx.attach("fe", "c3", "rooms:a", &[Mode::ObjectSubscribe]).await;
    let change = sub.next().await;
    assert_event(&change, "rooms:a", &[("connections", 3), ("objectSubscribers", 1)]);
    assert_ne!(str_at(&snapshot, &["id"]), str_at(&change, &["id"]), "event ids differ");
    sub.finish().await;

    // subscribe to a prefix: a channel that appears after the call (or, if
    // the attach wins the race, in the snapshot: either way the first event)
    let mut sub = Stream::start(client, &addr, &["subscribe", "--prefix", "late:", "--count", "1"]);
    fx.attach("fe", "c4", "late:x", &[Mode::Publish]).await;
    let event = sub.next().await;
    assert_event(&event, "late:x", &[("connections", 1), ("publishers", 1)]);
    sub.finish().await;

    // a front end following the session rule: it attaches, its session is
    // lost (closed behind its back), and its next KeepAlive re-sends its
    // state; the end of its input closes the session
    let (mut fe, mut input) = Stream::start_with_input(client, &addr, &["front-end", "fe-ex", "cx", "fe:a", "fe:b"]);
    let mut first = String::new();
    for ch in ["fe:a", "fe:b"] {
        let line = fe.next().await;
        assert_eq!(str_at(&line, &["call"]), "attach", "{line:?}");
        assert_eq!(str_at(&line, &["channel"]), ch, "{line:?}");
        assert_eq!(line.at(&["resynced"]).as_bool(), Some(false), "{line:?}");
        let epoch = str_at(&line, &["sessionEpoch"]);
        assert_ne!(epoch, "0", "{line:?}");
        assert!(first.is_empty() || first == epoch, "one lease: {line:?}");
        first = epoch;
    }
    assert_eq!(fx.get("fe:a").await[0], 1);
    assert!(fx.close("fe-ex").await);
    assert_eq!(fx.get("fe:b").await, [0; 9]);
    use tokio::io::AsyncWriteExt;
    input.write_all(b"\n").await.expect("write to the client");
    input.flush().await.expect("flush");
    let line = fe.next().await;
    assert_eq!(str_at(&line, &["call"]), "keepAlive", "{line:?}");
    assert_eq!(str_at(&line, &["status"]), "SESSION_STATUS_UNKNOWN", "{line:?}");
    assert_eq!(line.at(&["resynced"]).as_bool(), Some(true), "{line:?}");
    assert_ne!(str_at(&line, &["sessionEpoch"]), first, "a new lease: {line:?}");
    assert_eq!(fx.get("fe:a").await[0], 1, "{} restored its state", client.name());
    assert_eq!(fx.get("fe:b").await[0], 1);
    drop(input);
    fe.finish().await;
    assert_eq!(fx.get("fe:a").await, [0; 9], "closed at the end of its input");
}

/// Against a server with a key file: the client's `--key` (and
/// `OCCUPANCY_KEY`) is sent with every call; without it the call is
/// refused with UNAUTHENTICATED.
async fn credentials(client: &Client) {
    let keys = KeyFile::new(&key_file_text(""));
    let proc = Proc::spawn(&["--auth-keys", keys.path().to_str().expect("utf-8 path")]);
    let addr = proc.addr.to_string();
    let got = client
        .lines(&addr, &["--key", "dash:dash-secret", "get", "rooms:a"])
        .await;
    assert_eq!(got.len(), 1, "{} get printed {got:?}", client.name());
    assert_details(&got[0], "rooms:a", false, &[("connections", 0)]);
    let mut cmd = client.command(&addr, &["get", "rooms:a"]);
    cmd.env("OCCUPANCY_KEY", "dash:dash-secret");
    let out = run(cmd, CLIENT_TIMEOUT).await;
    assert!(
        out.ok(),
        "{} with OCCUPANCY_KEY failed:\n{}",
        client.name(),
        out.describe()
    );
    let mut cmd = client.command(&addr, &["get", "rooms:a"]);
    cmd.env_remove("OCCUPANCY_KEY").env_remove("OCCUPANCY_TOKEN");
    let out = run(cmd, CLIENT_TIMEOUT).await;
    assert!(!out.ok(), "{} without a key must fail", client.name());
    assert!(out.describe().contains("UNAUTHENTICATED"), "{}", out.describe());
}

/// Asserts a printed ChannelDetails.
fn assert_details(d: &Json, channel: &str, active: bool, metrics: &[(&str, u64)]) {
    assert_eq!(str_at(d, &["channelId"]), channel, "{d:?}");
    assert_eq!(
        d.at(&["status", "isActive"]).as_bool(),
        Some(active),
        "isActive of {d:?}"
    );
    let m = d.at(&["status", "occupancy", "metrics"]);
    for (name, want) in metrics {
        assert_eq!(m[*name].as_u64(), Some(*want), "{name} of {d:?}");
    }
}

/// Asserts a printed OccupancyEvent.
fn assert_event(e: &Json, channel: &str, metrics: &[(&str, u64)]) {
    assert_eq!(str_at(e, &["name"]), "[meta]occupancy", "{e:?}");
    assert_eq!(str_at(e, &["channel"]), channel, "{e:?}");
    assert!(!str_at(e, &["id"]).is_empty(), "{e:?}");
    let ts = str_at(e, &["timestampMs"]); // int64: a string in proto JSON
    assert!(ts.parse::<u64>().is_ok_and(|t| t > 0), "timestampMs of {e:?}");
    for (name, want) in metrics {
        assert_eq!(e.at(&["metrics", name]).as_u64(), Some(*want), "{name} of {e:?}");
    }
}

fn str_at(j: &Json, path: &[&str]) -> String {
    j.at(path)
        .as_str()
        .unwrap_or_else(|| panic!("no string at {path:?} in {j:?}"))
        .to_string()
}

fn ids(list: &[Json]) -> Vec<String> {
    list.iter().map(|d| str_at(d, &["channelId"])).collect()
}

/// What the clients print, one value a line.
type Json = serde_json::Value;

/// Path lookups that read as the clients' JSON does.
trait JsonPath {
    /// Parses one printed line.
    fn parse(s: &str) -> Result<Json, String>;
    /// The value at `path` (Null when absent).
    fn at(&self, path: &[&str]) -> &Json;
}

impl JsonPath for Json {
    fn parse(s: &str) -> Result<Json, String> {
        serde_json::from_str(s).map_err(|e| e.to_string())
    }

    fn at(&self, path: &[&str]) -> &Json {
        path.iter().fold(self, |j, k| &j[*k])
    }
}
