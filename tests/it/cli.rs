//! The `get`, `list`, `watch` and `stats` subcommands: human and JSON output, and
//! exit codes scripts can rely on.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use occupancy::proto::v1::Mode;
use tonic::transport::Channel;

use crate::fixture::{attach_op, Fx};
use crate::support::process::{binary, Proc};
use crate::support::{ReadClient, WriteClient};

fn run(args: &[&str]) -> Output {
    let mut child = Command::new(binary())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run occupancy");
    // bounded: the CLI gives up on calls after --timeout (5 s by default)
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("occupancy {args:?} did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

async fn server_with_state() -> (Proc, Fx) {
    let p = Proc::spawn(&[]);
    let ch = Channel::from_shared(p.url()).unwrap().connect().await.unwrap();
    let fx = Fx {
        r: ReadClient::new(ch.clone()),
        w: WriteClient::new(ch),
    };
    fx.attach("fe", "c1", "rooms:a", &[Mode::Presence, Mode::Publish]).await;
    fx.enter("fe", "c1", "rooms:a", "alice").await;
    fx.attach("fe", "c2", "rooms:a", &[Mode::Subscribe]).await;
    fx.attach("fe", "c1", "rooms:b", &[]).await;
    (p, fx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_prints_a_table_or_json() {
    let (p, _fx) = server_with_state().await;
    let url = p.url();
    let out = run(&["get", "rooms:a", "rooms:none", "--endpoint", &url]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("CHANNEL") && lines[0].contains("CONN") && lines[0].contains("PRES_MEMB"));
    let a: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(a, ["rooms:a", "2", "1", "1", "1", "1", "0", "0", "0", "1"]);
    assert!(lines[2].starts_with("rooms:none"));
    let out = run(&["get", "rooms:a", "rooms:none", "--json", "--endpoint", &url]);
    assert!(out.status.success());
    let v = json_lines(&out);
    assert_eq!(v.len(), 2);
    assert_eq!(v[0]["channelId"], "rooms:a");
    assert_eq!(v[0]["status"]["isActive"], true);
    assert_eq!(v[0]["status"]["occupancy"]["metrics"]["presenceMembers"], 1);
    assert_eq!(v[0]["status"]["occupancy"]["metrics"]["connections"], 2);
    assert_eq!(v[1]["status"]["isActive"], false);
    // the endpoint from the environment
    let out = Command::new(binary())
        .args(["get", "rooms:b", "--json"])
        .env("OCCUPANCY_ENDPOINT", &url)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(json_lines(&out)[0]["status"]["occupancy"]["metrics"]["connections"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_prints_the_totals() {
    let (p, _fx) = server_with_state().await;
    let url = p.url();
    let out = run(&["stats", "--json", "--endpoint", &url]);
    assert!(out.status.success());
    assert_eq!(
        json_lines(&out),
        [serde_json::json!({"activeChannels": 2, "connections": 3, "presenceMembers": 1, "sessions": 1})]
    );
    let out = run(&["stats", "--endpoint", &url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("active channels   2"), "{text}");
    assert!(text.contains("presence members  1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_walks_every_page() {
    let (p, fx) = server_with_state().await;
    let url = p.url();
    // 2,500 more channels: three pages of 1,000
    let ops: Vec<_> = (0..2_500)
        .map(|i| attach_op(&format!("b{i}"), &format!("bulk:{i:04}"), &[]))
        .collect();
    fx.apply("fe", ops).await;
    let out = run(&["list", "--prefix", "bulk:", "--by", "id", "--json", "--endpoint", &url]);
    assert!(out.status.success());
    let v = json_lines(&out);
    assert_eq!(v.len(), 2_500);
    assert_eq!(v[0]["channelId"], "bulk:0000");
    assert_eq!(v[2_499]["channelId"], "bulk:2499");
    assert!(v[0].get("status").is_none(), "names only");
    let out = run(&["list", "--prefix", "rooms:", "--endpoint", &url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().next().unwrap().starts_with("CHANNEL"));
    assert_eq!(text.lines().count(), 3);
    let out = run(&["list", "--prefix", "rooms:", "--by", "id", "--endpoint", &url]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "rooms:a\nrooms:b\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_events_and_draws_a_table() {
    let (p, fx) = server_with_state().await;
    let url = p.url();
    // JSON: the snapshot of both rooms, then a live change
    let watcher = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            run(&[
                "watch",
                "--prefix",
                "rooms:",
                "--json",
                "--count",
                "3",
                "--endpoint",
                &url,
            ])
        })
    };
    // the live change, made once the watcher is subscribed (retried until
    // it has seen three events; bounded)
    let mut out = None;
    for i in 0..100 {
        fx.attach("fe", &format!("w{i}"), "rooms:b", &[]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        if watcher.is_finished() {
            out = Some(watcher.await.unwrap());
            break;
        }
    }
    let out = out.expect("watch --count 3 ended");
    assert!(out.status.success());
    let v = json_lines(&out);
    assert_eq!(v.len(), 3);
    assert!(v.iter().all(|e| e["name"] == "[meta]occupancy"));
    assert!(v.iter().all(|e| e["channel"].as_str().unwrap().starts_with("rooms:")));
    assert!(v[2]["metrics"]["connections"].as_u64().unwrap() >= 2);
    // the table: busiest first, with the time of the last change
    let out = run(&["watch", "rooms:b", "rooms:a", "--count", "2", "--endpoint", &url]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let last_table: Vec<&str> = text.split("occupancy at").last().unwrap().lines().collect();
    assert!(last_table[1].contains("LAST CHANGE"));
    let busiest = last_table[2].split_whitespace().next().unwrap();
    assert_eq!(busiest, "rooms:b", "{text}");
    assert!(last_table[2].ends_with("UTC"));
}

#[test]
fn exit_codes() {
    // unreachable service: 3
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{dead}");
    for args in [
        vec!["get", "x", "--endpoint", url.as_str()],
        vec!["list", "--endpoint", url.as_str()],
        vec!["watch", "x", "--endpoint", url.as_str(), "--timeout", "1s"],
    ] {
        let out = run(&args);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be reached"));
    }
    // usage errors: 2
    for args in [
        vec!["get"],
        vec!["watch"],
        vec!["list", "--by", "nope"],
        vec!["get", "x", "--endpoint", "not a url"],
    ] {
        let out = run(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_arguments_exit_2() {
    let p = Proc::spawn(&[]);
    let url = p.url();
    for args in [
        vec!["get", "[meta]x", "--endpoint", url.as_str()],
        vec!["get", "", "--endpoint", url.as_str()],
        vec!["watch", "[x", "--endpoint", url.as_str()],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("invalid"), "{err}");
    }
}
