//! Server-sent event streams: snapshot then changes, filters, prefixes,
//! shutdown, resume with `Last-Event-ID` on another replica, and `live`
//! and heartbeat messages as SSE comments.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use occupancy::http::json::OccupancyEventJson;
use occupancy::proto::v1 as pb;
use pb::Mode;

use super::{client, LONG_TTL_MS, TTL};
use crate::fixture::*;
use crate::support::{Harness, TestServer};

both_stores!(
    sse_sends_snapshot_then_changes,
    sse_resumes_on_another_replica_missing_and_repeating_nothing,
);

async fn open_sse(
    s: &TestServer,
    path: &str,
    last_id: Option<&str>,
) -> impl futures::Stream<Item = OccupancyEventJson> + Unpin {
    let mut req = client()
        .get(format!("{}{path}", s.http_url()))
        .timeout(Duration::from_secs(3600));
    if let Some(id) = last_id {
        req = req.header("last-event-id", id);
    }
    let r = reqwest::Client::new().execute(req.build().unwrap()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    Box::pin(r.bytes_stream().eventsource().filter_map(|e| async move {
        let e = e.expect("sse");
        assert!(e.event == "message", "unexpected event {e:?}");
        let ev: OccupancyEventJson = serde_json::from_str(&e.data).expect("event json");
        assert_eq!(ev.id, e.id, "the SSE id is the event id");
        assert_eq!(ev.name, "[meta]occupancy");
        Some(ev)
    }))
}

async fn next_event(s: &mut (impl futures::Stream<Item = OccupancyEventJson> + Unpin)) -> OccupancyEventJson {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("an event within 10 s")
        .expect("stream open")
}

/// The next `n` events, as (connections, presence members) in order per
/// channel.
async fn per_channel(
    s: &mut (impl futures::Stream<Item = OccupancyEventJson> + Unpin),
    n: usize,
) -> BTreeMap<String, Vec<(u32, u32)>> {
    let mut got: BTreeMap<String, Vec<(u32, u32)>> = BTreeMap::new();
    for _ in 0..n {
        let e = next_event(s).await;
        got.entry(e.channel)
            .or_default()
            .push((e.data.metrics.connections, e.data.metrics.presence_members));
    }
    got
}

async fn sse_sends_snapshot_then_changes(h: Harness) {
    let s = h.http_server().await;
    let fx = Fx::new(&s).await;
    fx.keep_alive("fe", LONG_TTL_MS).await;
    fx.attach("fe", "c1", "live:a", &[Mode::Subscribe]).await;
    let mut one = open_sse(&s, "/channels/live:a/occupancy/stream", None).await;
    let mut pre = open_sse(&s, "/occupancy/stream?prefix=live:&categories=presenceMembers", None).await;
    // an explicit empty prefix follows every channel
    let mut all = open_sse(&s, "/occupancy/stream?prefix=", None).await;
    assert_eq!(next_event(&mut all).await.channel, "live:a");
    let snap = next_event(&mut one).await;
    assert_eq!((snap.channel.as_str(), snap.data.metrics.connections), ("live:a", 1));
    let snap = next_event(&mut pre).await;
    assert_eq!((snap.channel.as_str(), snap.data.metrics.subscribers), ("live:a", 1));
    fx.attach("fe", "c2", "live:a", &[Mode::Presence]).await;
    fx.enter("fe", "c2", "live:a", "ann").await;
    fx.attach("fe", "c3", "live:b", &[Mode::Presence]).await;
    fx.enter("fe", "c3", "live:b", "bo").await;
    let e = next_event(&mut one).await;
    assert_eq!(e.data.metrics.connections, 2);
    assert!(e.timestamp > 1_600_000_000_000);
    let e = next_event(&mut one).await;
    assert_eq!(e.data.metrics.presence_members, 1);
    // the prefix stream only hears presence member changes (not the
    // attach of c2), and of the channel that appeared later too (whose
    // first sight is always sent). Changes of different channels may sit
    // in different event shards, so order is only kept per channel.
    assert_eq!(
        per_channel(&mut pre, 3).await,
        BTreeMap::from([
            ("live:a".to_string(), vec![(2, 1)]),
            ("live:b".to_string(), vec![(1, 0), (1, 1)]),
        ])
    );
    assert_eq!(
        per_channel(&mut all, 4).await,
        BTreeMap::from([
            ("live:a".to_string(), vec![(2, 0), (2, 1)]),
            ("live:b".to_string(), vec![(1, 0), (1, 1)]),
        ])
    );
    // shutdown ends the streams
    s.stop().await.expect("clean stop");
    let end = tokio::time::timeout(Duration::from_secs(10), one.next()).await;
    assert!(matches!(end, Ok(None)), "stream ended on shutdown");
}

async fn sse_resumes_on_another_replica_missing_and_repeating_nothing(h: Harness) {
    let (a, b, c) = (h.http_server().await, h.http_server().await, h.http_server().await);
    let fx = Fx::new(&c).await;
    fx.keep_alive("fe", LONG_TTL_MS).await;
    for i in 0..5 {
        fx.attach("fe", &format!("c{i}"), &format!("res:{i}"), &[Mode::Subscribe])
            .await;
    }
    let mut sa = open_sse(&a, "/occupancy/stream?prefix=res:", None).await;
    let mut held: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..5 {
        let e = next_event(&mut sa).await;
        held.insert(e.channel, e.data.metrics.connections);
    }
    assert_eq!(held.values().copied().collect::<Vec<_>>(), [1; 5]);
    fx.attach("fe", "x0", "res:0", &[Mode::Subscribe]).await;
    let e = next_event(&mut sa).await;
    assert_eq!((e.channel.as_str(), e.data.metrics.connections), ("res:0", 2));
    let last = e.id.clone();
    drop(sa);
    // changes while away: res:1 twice, res:2 once, and a new channel
    fx.attach("fe", "x1", "res:1", &[Mode::Subscribe]).await;
    fx.attach("fe", "y1", "res:1", &[Mode::Subscribe]).await;
    fx.detach("fe", "c2", "res:2").await;
    fx.attach("fe", "x9", "res:9", &[Mode::Subscribe]).await;
    let mut sb = open_sse(&b, "/occupancy/stream?prefix=res:", Some(&last)).await;
    let mut got = BTreeMap::new();
    for _ in 0..3 {
        let e = next_event(&mut sb).await;
        assert!(
            got.insert(e.channel.clone(), e.data.metrics.connections).is_none(),
            "repeated {e:?}"
        );
    }
    assert_eq!(
        got,
        BTreeMap::from([
            ("res:1".to_string(), 3),
            ("res:2".to_string(), 0),
            ("res:9".to_string(), 1)
        ]),
        "exactly what changed while away, at its current state"
    );
    // and the next event is the next change: nothing else was queued
    fx.attach("fe", "x3", "res:3", &[Mode::Subscribe]).await;
    let e = next_event(&mut sb).await;
    assert_eq!((e.channel.as_str(), e.data.metrics.connections), ("res:3", 2));
    let ids: HashSet<String> = [last, e.id].into();
    assert_eq!(ids.len(), 2);
}

/// The subscription's `live` and heartbeat messages reach an SSE client as
/// comments (`: live` after the snapshot, `: heartbeat` on a quiet stream,
/// here every 200 ms), never as events or errors, and the stream still
/// carries the next change after several heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_turns_live_and_heartbeats_into_comments() {
    use crate::support::process::Proc;
    let p = Proc::spawn(&["--http-listen", "127.0.0.1:0", "--stream-heartbeat", "200ms"]);
    let http = p.http_addr();
    let fx = Fx::connect(&p.url()).await;
    let resp = client()
        .get(format!("http://{http}/channels/sse:quiet/occupancy/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    // read until `pred(text)`, within 10 s
    async fn until(
        body: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
        text: &mut String,
        pred: impl Fn(&str) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !pred(text) {
            let chunk = tokio::time::timeout_at(deadline, body.next())
                .await
                .unwrap_or_else(|_| panic!("stream so far: {text:?}"))
                .expect("stream open")
                .expect("chunk");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
    until(&mut body, &mut text, |t| t.matches(": heartbeat\n").count() >= 3).await;
    // the snapshot event, then `: live`, then only heartbeats
    let blocks: Vec<&str> = text.split("\n\n").filter(|b| !b.is_empty()).collect();
    assert!(blocks[0].contains("data:"), "{text:?}");
    assert_eq!(blocks[1], ": live", "{text:?}");
    assert!(blocks[2..].iter().all(|b| *b == ": heartbeat"), "{text:?}");
    assert!(!text.contains("event: error"), "{text:?}");
    // still live
    fx.keep_alive("fe", 60_000).await;
    fx.attach("fe", "c1", "sse:quiet", &[Mode::Subscribe]).await;
    let seen = text.len();
    until(&mut body, &mut text, |t| t[seen..].contains("\"connections\":1")).await;
}
