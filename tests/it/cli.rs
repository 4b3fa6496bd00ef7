//! The `get`, `list`, `watch` and `stats` subcommands: human and JSON output, and
//! exit codes scripts can rely on.

use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use occupancy::proto::v1::Mode;

use crate::fixture::{attach_op, Fx};
use crate::support::process::{binary, Proc};
use crate::support::RedisServer;

pub(crate) fn run(args: &[&str]) -> Output {
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

pub(crate) fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

async fn server_with_state() -> (Proc, Fx) {
    let p = Proc::spawn(&[]);
    let fx = Fx::connect(&p.url()).await;
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

/// Runs `occupancy ARGS` with its standard output a pipe whose reader is
/// already gone, as `occupancy list | head` leaves it once `head` exits.
fn run_into_a_closed_pipe(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let child = Command::new(binary())
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("run occupancy");
    // bounded: the child writes once and exits, or the CLI's --timeout ends it
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("occupancy {args:?} did not exit within 30 s"))
        .expect("output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_goes_away_ends_the_command_quietly() {
    let (p, _fx) = server_with_state().await;
    let url = p.url();
    for args in [
        &["list", "--json", "--endpoint", &url][..],
        &["get", "rooms:a", "--endpoint", &url][..],
        &["stats", "--endpoint", &url][..],
        &["key", "ops", "-c", "*=read"][..],
    ] {
        let out = run_into_a_closed_pipe(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?}, stderr: {err}", out.status);
        assert!(err.is_empty(), "{args:?} said something: {err}");
    }
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

/// `get` as people type the address: HOST:PORT (as grpcurl and the
/// Python and Node examples take it), localhost:PORT, and URLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_as_people_write_them() {
    let (p, _fx) = server_with_state().await;
    let port = p.addr.port();
    for endpoint in [
        p.addr.to_string(),
        format!("localhost:{port}"),
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
    ] {
        let out = run(&["get", "rooms:a", "--json", "--endpoint", &endpoint]);
        assert!(
            out.status.success(),
            "{endpoint}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(json_lines(&out)[0]["status"]["occupancy"]["metrics"]["connections"], 2);
    }
    // several, comma-separated, the first one dead: the next one answers
    let dead = free_addr();
    let out = run(&["get", "rooms:a", "--endpoint", &format!("{dead},{}", p.addr)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // https:// is taken (TLS); this server speaks plain gRPC, so the
    // handshake fails: unreachable, not a usage error
    let out = run(&[
        "get",
        "x",
        "--timeout",
        "2s",
        "--endpoint",
        &format!("https://127.0.0.1:{port}"),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    // what cannot be used is named
    for (endpoint, why) in [
        ("localhost", "no port"),
        ("redis://127.0.0.1:6379", "unsupported scheme"),
        ("", "empty"),
    ] {
        let out = run(&["get", "x", "--endpoint", endpoint]);
        assert_eq!(out.status.code(), Some(2), "{endpoint:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(why) && err.contains("invalid endpoint"),
            "{endpoint:?}: {err}"
        );
    }
}

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Exit codes tell the kinds of failure apart: 3 nothing answers (bare
/// HOST:PORT too), 4 the service answered but its Redis is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_store_unavailable_exit_differently() {
    let dead = free_addr().to_string();
    for args in [
        vec!["get", "x", "--endpoint", dead.as_str()],
        vec!["list", "--endpoint", dead.as_str()],
        vec!["watch", "x", "--timeout", "1s", "--endpoint", dead.as_str()],
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert!(err.contains("cannot be reached") && err.contains(&dead), "{err}");
    }
    // an address where a channel goes: the call went to --endpoint, and a
    // hint says how to reach the address instead
    let out = run(&["get", "127.0.0.1:50551", "x", "--endpoint", dead.as_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("hint:") && err.contains("--endpoint 127.0.0.1:50551"),
        "{err}"
    );
    let out = run(&["get", "x", "--endpoint", dead.as_str()]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("hint:"));
    let mut redis = RedisServer::start();
    let p = Proc::spawn(&["--redis-url", &redis.url(), "--redis-timeout", "300ms"]);
    let addr = p.addr.to_string();
    let out = run(&["get", "x", "--endpoint", &addr]);
    assert!(out.status.success());
    redis.kill();
    for args in [
        vec!["get", "x", "--endpoint", addr.as_str()],
        vec!["list", "--endpoint", addr.as_str()],
        vec!["watch", "x", "--endpoint", addr.as_str()],
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {err}");
        assert!(
            err.contains("answered") && err.contains("store (Redis) is unavailable"),
            "{err}"
        );
        assert!(!err.contains("cannot be reached"), "{err}");
    }
}

/// `occupancy health`: 0 and SERVING while the store answers, 1 when the
/// replica reports NOT_SERVING or cannot be reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_exits_0_when_serving_and_1_otherwise() {
    let mut redis = RedisServer::start();
    let p = Proc::spawn(&[
        "--redis-url",
        &redis.url(),
        "--redis-timeout",
        "300ms",
        "--health-interval",
        "100ms",
    ]);
    let addr = p.addr.to_string();
    let out = run(&["health", "--endpoint", &addr]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SERVING");
    let out = run(&[
        "health",
        "--endpoint",
        &p.url(),
        "--service",
        "occupancy.v1.OccupancyService",
    ]);
    assert_eq!(out.status.code(), Some(0));
    redis.kill();
    // the probe notices within its interval (bounded wait)
    let mut last = None;
    for _ in 0..100 {
        let out = run(&["health", "--endpoint", &addr]);
        if out.status.code() == Some(1) {
            last = Some(out);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = last.expect("health reported NOT_SERVING within 10 s");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "NOT_SERVING");
    // --live (a liveness probe): the replica answers, so it lives
    let out = run(&["health", "--live", "--endpoint", &addr]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "NOT_SERVING");
    let dead = free_addr().to_string();
    let out = run(&["health", "--endpoint", &dead, "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    let out = run(&["health", "--live", "--endpoint", &dead, "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(1), "nothing answers: not alive");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&dead));
    let out = run(&["health", "--endpoint", "nope"]);
    assert_eq!(out.status.code(), Some(1));
}

/// A running `occupancy watch` (table mode) whose output is collected.
struct Watch {
    child: std::process::Child,
    out: Arc<Mutex<String>>,
}

type Table = Vec<Vec<String>>;

impl Watch {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(binary())
            .arg("watch")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run occupancy watch");
        let mut stdout = child.stdout.take().unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self { child, out }
    }

    /// Every complete table drawn so far, rows split into words.
    fn tables(&self) -> Vec<Table> {
        let text = self.out.lock().unwrap().clone();
        text.split("occupancy at ")
            .skip(1)
            .filter_map(|block| {
                let (table, _) = block.split_once("\n\n")?;
                let mut lines = table.lines().skip(1);
                let header = lines.next()?;
                assert!(
                    header.starts_with("CHANNEL") && header.contains("LAST CHANGE"),
                    "{header}"
                );
                Some(
                    lines
                        .map(|l| l.split_whitespace().map(str::to_string).collect())
                        .collect(),
                )
            })
            .collect()
    }

    /// Waits (at most 15 s) until the last table drawn satisfies `pred`.
    async fn until(&self, what: &str, pred: impl Fn(&Table) -> bool) -> Table {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(t) = self.tables().last() {
                if pred(t) {
                    return t.clone();
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: not shown within 15 s; output:\n{}",
                self.out.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn row<'a>(t: &'a Table, channel: &str) -> Option<&'a Vec<String>> {
    t.iter().find(|r| r[0] == channel)
}

fn conns(t: &Table, channel: &str) -> Option<u64> {
    row(t, channel).and_then(|r| r[1].parse().ok())
}

/// The table always ends on the latest state of every followed channel:
/// the whole snapshot (not just its first event), and after a burst of
/// changes the last one, drawn after the burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_table_shows_the_snapshot_and_the_end_of_a_burst() {
    let (p, fx) = server_with_state().await;
    fx.attach("fe", "c9", "rooms:c", &[]).await;
    let url = p.addr.to_string();
    let w = Watch::start(&["--prefix", "rooms:", "--endpoint", &url]);
    let t = w.until("all three rooms", |t| t.len() == 3).await;
    assert_eq!(t[0][0], "rooms:a", "busiest first: {t:?}");
    assert_eq!(conns(&t, "rooms:c"), Some(1));
    // a burst faster than the redraw period, then nothing: the last table
    // shows its end
    for i in 0..30 {
        fx.attach("fe", &format!("burst{i}"), "rooms:c", &[]).await;
    }
    let t = w
        .until("the end of the burst", |t| conns(t, "rooms:c") == Some(31))
        .await;
    assert_eq!(t[0][0], "rooms:c", "now the busiest: {t:?}");
    // named channels: every one, inactive ones as zero
    let w = Watch::start(&["rooms:a", "rooms:b", "games:chess", "--endpoint", &url]);
    let t = w.until("the three named channels", |t| t.len() == 3).await;
    assert_eq!(conns(&t, "games:chess"), Some(0));
    assert_eq!(conns(&t, "rooms:b"), Some(1));
}

/// Nothing to show still shows the (empty) table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_table_of_nothing_prints_its_header() {
    let p = Proc::spawn(&[]);
    let w = Watch::start(&["--prefix", "nothing:", "--endpoint", &p.addr.to_string()]);
    let t = w.until("an empty table", |_| true).await;
    assert!(t.is_empty(), "{t:?}");
}

/// After Redis restarts empty, the table shows zero (as `--json` does),
/// not the old count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_table_follows_a_redis_restart() {
    let mut redis = RedisServer::start();
    let p = Proc::spawn(&["--redis-url", &redis.url()]);
    let fx = Fx::connect(&p.url()).await;
    fx.attach("fe", "c1", "rooms:a", &[]).await;
    fx.attach("fe", "c2", "rooms:a", &[]).await;
    let w = Watch::start(&["--all", "--endpoint", &p.addr.to_string()]);
    w.until("rooms:a at 2", |t| conns(t, "rooms:a") == Some(2)).await;
    redis.restart();
    w.until("rooms:a back to 0", |t| conns(t, "rooms:a") == Some(0)).await;
}

/// Exit 1 for anything else: here a gRPC server that is not the
/// occupancy service (UNIMPLEMENTED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_errors_exit_1() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let out = tokio::task::spawn_blocking(move || run(&["get", "x", "--endpoint", &addr]))
        .await
        .unwrap();
    server.abort();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("does not offer the occupancy service"), "{err}");
}
