//! The `occupancy` binary itself: configuration errors, reflection and
//! grpcurl, replicas sharing a Redis, graceful shutdown.

use std::process::Command;
use std::time::{Duration, Instant};

use occupancy::proto::v1 as pb;
use pb::Mode;
use tonic::transport::Channel;

use crate::fixture::Fx;
use crate::support::certs::localhost_certificates;
use crate::support::process::{binary, stdout_of, Proc};
use crate::support::RedisServer;

#[test]
fn invalid_configuration_exits_before_binding() {
    // hold a port: if the binary bound before validating, it would fail on
    // the port instead of naming the bad option
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    for (args, needle) in [
        (vec!["--session-ttl", "0s"], "session-ttl"),
        (vec!["--session-ttl", "11m"], "session-ttl"),
        (vec!["--redis-url", "nope://x"], "redis-url"),
        (
            vec!["--redis-url", "redis://127.0.0.1:1", "--key-prefix", "a b"],
            "key-prefix",
        ),
        (vec!["--redis-timeout", "0s"], "redis-timeout"),
        (vec!["--event-shards", "0"], "event-shards"),
    ] {
        let out = Command::new(binary())
            .args(["serve", "--listen", &addr])
            .args(&args)
            .output()
            .expect("run occupancy");
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: stderr {err:?} should name {needle}");
        assert!(!err.contains("cannot listen"), "{args:?} bound before validating");
    }
    let out = Command::new(binary())
        .env("OCCUPANCY_SESSION_TTL", "forever")
        .args(["--listen", &addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("session-ttl"));
}

#[tokio::test]
async fn two_processes_share_one_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = Proc::spawn(&["--redis-url", &url, "--key-prefix", "shared"]);
    let b = Proc::spawn(&["--redis-url", &url, "--key-prefix", "shared"]);
    let fa = Fx::connect(&a.url()).await;
    let fb = Fx::connect(&b.url()).await;
    fa.attach("fe-1", "c1", "room", &[Mode::Presence, Mode::Publish]).await;
    fa.enter("fe-1", "c1", "room", "alice").await;
    // visible on the other replica at once: no polling
    assert_eq!(fb.get("room").await, [1, 1, 0, 1, 1, 0, 0, 0, 1]);
    fb.attach("fe-2", "c2", "room", &[Mode::Subscribe]).await;
    assert_eq!(fa.get("room").await, [2, 1, 1, 1, 1, 0, 0, 0, 1]);
    assert_eq!(fb.list_all("", 10).await, ["room"]);
    // a different prefix is a different deployment
    let c = Proc::spawn(&["--redis-url", &url, "--key-prefix", "other"]);
    let fc = Fx::connect(&c.url()).await;
    assert_eq!(fc.get("room").await, [0; 9]);
    fb.detach("fe-1", "c1", "room").await;
    assert_eq!(fa.get("room").await, [1, 0, 1, 0, 0, 0, 0, 0, 0]);
}

#[tokio::test]
async fn reflection_describes_the_services() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let p = Proc::spawn(&[]);
    let ch = Channel::from_shared(p.url()).unwrap().connect().await.unwrap();
    let mut client = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().expect("a response");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "occupancy.v1.OccupancyService",
        "occupancy.v1.ConnectionService",
        "occupancy.v1.IntegrationService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
}

/// The README's grpcurl session, run as written (grpcurl is installed by
/// the test command).
#[test]
fn grpcurl_session_from_the_readme() {
    let grpcurl = which("grpcurl").expect("grpcurl not found: run the README's test command, which installs it");
    let p = Proc::spawn(&[]);
    let addr = p.addr.to_string();
    let call = |method: &str, body: &str| -> String {
        let mut cmd = Command::new(&grpcurl);
        cmd.args(["-plaintext", "-d", body, &addr, method]);
        String::from_utf8(stdout_of(&mut cmd, &format!("grpcurl {method}"))).unwrap()
    };
    let out = call(
        "occupancy.v1.ConnectionService/Attach",
        r#"{"session_id":"fe-1","connection_id":"conn-1","channel":"rooms:lobby","modes":["MODE_PUBLISH","MODE_SUBSCRIBE","MODE_PRESENCE"]}"#,
    );
    assert!(out.contains(r#""connections": 1"#), "{out}");
    let out = call(
        "occupancy.v1.ConnectionService/EnterPresence",
        r#"{"session_id":"fe-1","connection_id":"conn-1","channel":"rooms:lobby","client_id":"alice"}"#,
    );
    assert!(out.contains(r#""presenceMembers": 1"#), "{out}");
    let out = call(
        "occupancy.v1.OccupancyService/GetOccupancy",
        r#"{"channel":"rooms:lobby"}"#,
    );
    assert!(
        out.contains(r#""isActive": true"#) && out.contains(r#""presenceClients": 1"#),
        "{out}"
    );
    let out = call("occupancy.v1.OccupancyService/ListChannels", r#"{"prefix":"rooms:"}"#);
    assert!(out.contains(r#""channelId": "rooms:lobby""#), "{out}");
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

// multi-threaded, so the client's connection keeps answering (GOAWAY)
// while this thread waits for the process
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly() {
    let mut p = Proc::spawn(&[]);
    let f = Fx::connect(&p.url()).await;
    f.attach("fe", "c1", "x", &[]).await;
    let started = Instant::now();
    p.signal("TERM");
    let status = p.wait(Duration::from_secs(15)).expect("exited after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    // idle connections do not hold shutdown up to the 10 s grace period
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

/// `--listen` takes a host name; the start-up line names the version,
/// store, address, key prefix and shard count, once.
#[test]
fn listen_resolves_names_and_the_start_up_line_says_what_runs() {
    let redis = RedisServer::start();
    let p = Proc::spawn_on(
        "localhost:0",
        &[
            "--redis-url",
            &redis.url(),
            "--key-prefix",
            "firsthour",
            "--event-shards",
            "4",
        ],
    );
    assert!(p.addr.ip().is_loopback(), "{}", p.addr);
    let log = p.log.lock().unwrap().clone();
    let serving: Vec<_> = log.iter().filter(|l| l.contains(" serving ")).collect();
    assert_eq!(serving.len(), 1, "{log:?}");
    let line = serving[0];
    for want in [
        format!("version={}", env!("CARGO_PKG_VERSION")),
        "store=redis".to_string(),
        format!("redis={}", redis.url()),
        "key_prefix=firsthour".to_string(),
        "partitions=1".to_string(),
        "event_shards=4".to_string(),
    ] {
        assert!(line.contains(&want), "{want} missing from {line}");
    }
    let p = Proc::spawn(&[]);
    let line = p
        .log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains(" serving "))
        .cloned()
        .unwrap();
    assert!(
        line.contains("store=memory") && line.contains("event_shards="),
        "{line}"
    );
}

/// A port already in use: one clear line on stderr, nothing else, and a
/// failure exit.
#[test]
fn port_in_use_prints_one_line() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let out = Command::new(binary())
        .args(["serve", "--listen", &addr])
        .env("RUST_LOG", "info")
        .output()
        .expect("run occupancy");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with(&format!("error: cannot listen on {addr}")) && lines[0].contains("another process"),
        "{err}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "nothing logged before binding"
    );
}

/// A 10 s Redis outage while a subscription is open: each kind of
/// background work logs the outage once and its end once (not the reaper
/// every 250 ms and every event shard apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_logged_in_a_handful_of_lines() {
    let mut redis = RedisServer::start();
    let p = Proc::spawn(&["--redis-url", &redis.url(), "--redis-timeout", "300ms"]);
    let f = Fx::connect(&p.url()).await;
    f.attach("fe", "c1", "rooms:a", &[]).await;
    // a subscriber, so the event readers follow the streams
    let mut sub =
        f.r.clone()
            .subscribe_occupancy(pb::SubscribeOccupancyRequest {
                all_channels: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    let first = sub.message().await.unwrap().expect("the snapshot");
    assert!(first.into_event().unwrap().is_some());
    let before = p.log.lock().unwrap().len();
    redis.kill();
    // the outage itself: ten seconds of Redis being away (this is the
    // condition under test, not a wait for a signal)
    std::thread::sleep(Duration::from_secs(10));
    redis.start_again();
    // back: wait (bounded) for the lines that say so
    let deadline = Instant::now() + Duration::from_secs(15);
    let recovered = |what: &str| {
        p.log.lock().unwrap()[before..]
            .iter()
            .any(|l| l.contains(what) && l.contains("available again"))
    };
    while !(p.logged("store ready: SERVING") && recovered("session reaper") && recovered("event stream readers")) {
        assert!(
            Instant::now() < deadline,
            "no recovery logged: {:?}",
            p.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // a few more reap rounds: nothing more is logged
    std::thread::sleep(Duration::from_millis(600));
    let log = p.log.lock().unwrap()[before..].to_vec();
    let text = log.join("\n");
    assert!(log.len() <= 8, "{} lines during a 10 s outage:\n{text}", log.len());
    let reaper = log.iter().filter(|l| l.contains("session reaper")).count();
    assert_eq!(reaper, 2, "the reaper's outage and its end:\n{text}");
    let readers = log.iter().filter(|l| l.contains("event stream readers")).count();
    assert!(readers <= 2, "the event readers together, not per shard:\n{text}");
    assert!(text.contains("NOT_SERVING"), "{text}");
}

/// `rediss://`: the service talks TLS to a redis-server with a TLS port
/// (certificates from a test CA, trusted through --redis-ca-file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_connects_with_tls() {
    let tls = TlsRedis::start();
    let url = format!("rediss://localhost:{}/", tls.port);
    let ca = tls.dir.path().join("ca.pem");
    let p = Proc::spawn(&["--redis-url", &url, "--redis-ca-file", ca.to_str().unwrap()]);
    let f = Fx::connect(&p.url()).await;
    f.attach("fe", "c1", "rooms:tls", &[Mode::Publish]).await;
    assert_eq!(f.get("rooms:tls").await[..2], [1, 1]);
    // the state is in that Redis (read over TLS by a second replica)
    let q = Proc::spawn(&["--redis-url", &url, "--redis-ca-file", ca.to_str().unwrap()]);
    assert_eq!(Fx::connect(&q.url()).await.get("rooms:tls").await[0], 1);
    let out = Command::new(binary())
        .args(["health", "--endpoint", &q.addr.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
    // without the CA the certificate is refused: the replica runs but
    // reports NOT_SERVING, and calls fail
    let r = Proc::spawn(&["--redis-url", &url, "--redis-timeout", "500ms"]);
    let out = Command::new(binary())
        .args(["get", "rooms:tls", "--endpoint", &r.addr.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A redis-server listening with TLS only, on a free loopback port, with a
/// CA and a server certificate (for localhost and 127.0.0.1) made here.
struct TlsRedis {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        localhost_certificates(dir.path(), "server.pem", "server.key");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let path = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--tls-cert-file",
                &path("server.pem"),
                "--tls-key-file",
                &path("server.key"),
            ])
            .args(["--tls-ca-cert-file", &path("ca.pem"), "--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no", "--dir", &path("")])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server");
        let mut me = Self { child, port, dir };
        // ready once the port accepts (bounded)
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                me.child.try_wait().unwrap().is_none(),
                "redis-server exited: is it built with TLS?"
            );
            assert!(Instant::now() < deadline, "redis-server TLS port not open");
            std::thread::sleep(Duration::from_millis(20));
        }
        me.port = port;
        me
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
