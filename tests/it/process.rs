//! The `occupancy` binary itself: configuration errors, reflection and
//! grpcurl, replicas sharing a Redis, graceful shutdown.

use std::process::Command;
use std::time::{Duration, Instant};

use occupancy::proto::v1 as pb;
use pb::Mode;
use tonic::transport::Channel;

use crate::fixture::Fx;
use crate::support::process::{binary, Proc};
use crate::support::{ReadClient, RedisServer, WriteClient};

async fn fx(url: String) -> Fx {
    let ch = Channel::from_shared(url).unwrap().connect().await.expect("connect");
    Fx {
        r: ReadClient::new(ch.clone()),
        w: WriteClient::new(ch),
    }
}

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
    let fa = fx(a.url()).await;
    let fb = fx(b.url()).await;
    fa.attach("fe-1", "c1", "room", &[Mode::Presence, Mode::Publish]).await;
    fa.enter("fe-1", "c1", "room", "alice").await;
    // visible on the other replica at once: no polling
    assert_eq!(fb.get("room").await, [1, 1, 0, 1, 1, 0, 0, 0, 1]);
    fb.attach("fe-2", "c2", "room", &[Mode::Subscribe]).await;
    assert_eq!(fa.get("room").await, [2, 1, 1, 1, 1, 0, 0, 0, 1]);
    assert_eq!(fb.list_all("", 10).await, ["room"]);
    // a different prefix is a different deployment
    let c = Proc::spawn(&["--redis-url", &url, "--key-prefix", "other"]);
    let fc = fx(c.url()).await;
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
        let out = Command::new(&grpcurl)
            .args(["-plaintext", "-d", body, &addr, method])
            .output()
            .expect("run grpcurl");
        assert!(
            out.status.success(),
            "grpcurl {method}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
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
    let f = fx(p.url()).await;
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
