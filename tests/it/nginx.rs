//! Three replicas and one Redis behind the shipped nginx configuration: a
//! client subscribed through nginx sees every write made through nginx, and
//! when the replica holding its stream is killed it resumes on another one
//! and converges to the right state. A quiet stream outlives nginx's read
//! timeout thanks to the service's heartbeats.

use std::collections::HashMap;
use std::time::Duration;

use occupancy::proto::v1 as pb;
use pb::Mode;
use tonic::transport::Channel;

use crate::fixture::*;
use crate::support::nginx::Nginx;
use crate::support::process::Proc;
use crate::support::sub::{m, req, Sub};
use crate::support::{ReadClient, RedisServer};

async fn through(url: &str) -> (Fx, Channel) {
    let ch = Channel::from_shared(url.to_string())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect to nginx");
    (Fx::over(ch.clone()), ch)
}

async fn subscribe_via(ch: &Channel, r: pb::SubscribeOccupancyRequest) -> Sub {
    let stream = ReadClient::new(ch.clone())
        .subscribe_occupancy(r)
        .await
        .expect("subscribe through nginx")
        .into_inner();
    Sub::from_stream(stream)
}

/// The replicas' gRPC addresses, as nginx's upstream lists them.
fn addrs(replicas: &[Proc]) -> Vec<std::net::SocketAddr> {
    replicas.iter().map(|p| p.addr).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_nginx_survive_a_killed_replica() {
    let redis = RedisServer::start();
    let mut replicas = Proc::replicas(3, &redis.url(), &[]);
    let nginx = Nginx::start(&addrs(&replicas));
    let (fx, ch) = through(&nginx.url()).await;
    let channels = ["lobby", "game-1"];
    let mut sub = subscribe_via(&ch, req(&channels)).await;
    let mut last = sub.next().await;
    sub.next().await;
    // every write through nginx (spread over the replicas) arrives, in order
    for i in 1..=30 {
        let channel = channels[i % 2];
        fx.attach("fe-1", &format!("c{i}"), channel, &[Mode::Subscribe]).await;
        let e = sub.next().await;
        assert_eq!(e.channel, channel);
        assert_eq!(m(&e)[0] as usize, i.div_ceil(2));
        last = e;
    }
    // which replica holds the stream: the one that logged it
    let holder = replicas
        .iter()
        .position(|p| p.logged("subscription opened"))
        .expect("a replica logged the subscription");
    let mut killed = replicas.remove(holder);
    killed.signal("KILL");
    killed.wait(Duration::from_secs(5)).expect("killed replica exited");
    // the stream breaks; meanwhile writes go on through nginx
    let broke = sub.next_within(Duration::from_secs(10)).await;
    assert!(
        matches!(broke, Some(Err(_)) | None),
        "stream should fail, got {broke:?}"
    );
    for i in 31..=40 {
        let channel = channels[i % 2];
        fx.attach("fe-2", &format!("c{i}"), channel, &[Mode::Publish]).await;
    }
    fx.detach("fe-1", "c1", "game-1").await;
    // resume through nginx, necessarily on another replica
    let mut r = req(&channels);
    r.resume_from = last.id.clone();
    let mut sub = subscribe_via(&ch, r).await;
    let latest: HashMap<String, [u32; 9]> = sub.settle(Duration::from_millis(500)).await;
    for c in channels {
        let truth = fx.get(c).await;
        assert_eq!(latest.get(c), Some(&truth), "{c} converged after resume");
    }
    assert!(
        replicas.iter().any(|p| p.logged("subscription opened")),
        "resumed on a surviving replica"
    );
}

/// Reads the next server-sent event's data as JSON (bounded).
async fn next_sse(
    events: &mut (impl futures::Stream<Item = Result<eventsource_stream::Event, impl std::fmt::Debug>> + Unpin),
) -> serde_json::Value {
    use futures::StreamExt;
    let e = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("an event within 10 s")
        .expect("stream open")
        .expect("well-formed event");
    let v: serde_json::Value = serde_json::from_str(&e.data).expect("json");
    assert_eq!(v["id"], serde_json::Value::from(e.id));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_side_works_through_nginx() {
    use eventsource_stream::Eventsource;
    let redis = RedisServer::start();
    let replicas = Proc::replicas(3, &redis.url(), &["--http-listen", "127.0.0.1:0"]);
    let nginx = Nginx::start_with_http(
        &addrs(&replicas),
        &replicas.iter().map(|p| p.http_addr()).collect::<Vec<_>>(),
    );
    let (fx, _) = through(&nginx.url()).await;
    let base = format!("http://{}", nginx.http_addr);
    let http = reqwest::Client::new();
    fx.keep_alive("fe", 60_000).await;
    fx.attach("fe", "c1", "via/nginx", &[Mode::Subscribe]).await;
    // REST, with a channel name that needs percent-encoding
    for _ in 0..3 {
        let v: serde_json::Value = http
            .get(format!("{base}/channels/via%2Fnginx"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["channelId"], "via/nginx");
        assert_eq!(v["status"]["occupancy"]["metrics"]["connections"], 1);
    }
    let page = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<title>Occupancy</title>"));
    // events pass through unbuffered; a reconnect with Last-Event-ID
    // (through nginx, to whichever replica) gets only what changed since
    let open = |last: Option<String>| {
        let mut r = http
            .get(format!("{base}/occupancy/stream?prefix=via"))
            .timeout(Duration::from_secs(60));
        if let Some(id) = last {
            r = r.header("last-event-id", id);
        }
        r.send()
    };
    let mut events = Box::pin(open(None).await.unwrap().bytes_stream().eventsource());
    let snap = next_sse(&mut events).await;
    assert_eq!(snap["data"]["metrics"]["connections"], 1);
    fx.attach("fe", "c2", "via/nginx", &[Mode::Subscribe]).await;
    let e = next_sse(&mut events).await;
    assert_eq!(e["data"]["metrics"]["connections"], 2);
    drop(events);
    fx.attach("fe", "c3", "via/nginx", &[Mode::Subscribe]).await;
    fx.attach("fe", "c1", "via/other", &[Mode::Subscribe]).await;
    let mut events = Box::pin(
        open(Some(e["id"].as_str().unwrap().to_string()))
            .await
            .unwrap()
            .bytes_stream()
            .eventsource(),
    );
    let mut got = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let e = next_sse(&mut events).await;
        got.insert(
            e["channel"].as_str().unwrap().to_string(),
            e["data"]["metrics"]["connections"].as_u64().unwrap(),
        );
    }
    assert_eq!(
        got,
        std::collections::BTreeMap::from([("via/nginx".to_string(), 3), ("via/other".to_string(), 1)])
    );
    fx.detach("fe", "c1", "via/other").await;
    let e = next_sse(&mut events).await;
    assert_eq!(
        (e["channel"].as_str(), e["data"]["metrics"]["connections"].as_u64()),
        (Some("via/other"), Some(0))
    );
}

/// A stream with nothing to say used to send nothing, so a proxy's read
/// timeout cut it. With nginx's `grpc_read_timeout` lowered to 2 s and the
/// replicas' heartbeat at 500 ms, a quiet stream stays open well past 2 s
/// and still carries the next change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_stream_through_nginx_outlives_its_read_timeout() {
    let redis = RedisServer::start();
    let replicas = Proc::replicas(2, &redis.url(), &["--stream-heartbeat", "500ms"]);
    let nginx = Nginx::start_with(&addrs(&replicas), |c| {
        assert!(c.contains("grpc_read_timeout 1h;"), "deploy/nginx.conf changed");
        c.replace("grpc_read_timeout 1h;", "grpc_read_timeout 2s;")
    });
    let (fx, ch) = through(&nginx.url()).await;
    let mut sub = subscribe_via(&ch, req(&["quiet"])).await;
    assert_eq!(m(&sub.next().await), [0; 9]);
    // three times the read timeout with no change at all
    let quiet_until = tokio::time::Instant::now() + Duration::from_secs(6);
    let mut messages = 0;
    while tokio::time::Instant::now() < quiet_until {
        let left = quiet_until.saturating_duration_since(tokio::time::Instant::now());
        match sub.message_within(left).await {
            None => break,
            Some(Ok(msg)) => {
                assert!(msg.event.is_none(), "nothing changed: {msg:?}");
                messages += 1;
            }
            Some(Err(status)) => panic!("the quiet stream was cut: {status:?}"),
        }
        assert!(messages < 1_000, "a flood of messages, not heartbeats");
    }
    assert!(
        sub.heartbeats + messages >= 6,
        "heartbeats kept it open: {messages} messages"
    );
    // still live: the next change arrives
    fx.attach("fe", "c1", "quiet", &[Mode::Subscribe]).await;
    let e = sub.next().await;
    assert_eq!((e.channel.as_str(), m(&e)[0]), ("quiet", 1));
}
