//! The HTTP side against both stores: REST answers equal gRPC's for the
//! same state, paging, JSON errors, app-wide totals, server-sent events
//! with resume on another replica, and Prometheus metrics.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use occupancy::http::json::{ChannelDetailsJson, MetricsJson, OccupancyEventJson, StatsJson};
use occupancy::proto::v1 as pb;
use pb::Mode;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::fixture::*;
use crate::support::{eventually, Harness, TestServer};

/// Lease of sessions that are left to expire.
const TTL: Duration = Duration::from_millis(800);
const LONG_TTL_MS: u32 = 60_000;

both_stores!(
    rest_answers_equal_grpc_answers,
    rest_list_walks_2500_channels_without_repeats_or_empty_pages,
    bad_http_input_gets_a_json_error_naming_the_field,
    stats_equal_the_sum_over_channels_after_load_and_expiries,
    sse_sends_snapshot_then_changes,
    sse_resumes_on_another_replica_missing_and_repeating_nothing,
    metrics_parse_and_move_with_load,
);

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

fn from_pb(d: &pb::ChannelDetails) -> ChannelDetailsJson {
    let st = d.status.as_ref().expect("status");
    let m = st.occupancy.as_ref().and_then(|o| o.metrics.as_ref()).expect("metrics");
    let mut j = ChannelDetailsJson::new(d.channel_id.clone(), Default::default());
    j.status.is_active = st.is_active;
    j.status.occupancy.metrics = MetricsJson {
        connections: m.connections,
        publishers: m.publishers,
        subscribers: m.subscribers,
        presence_connections: m.presence_connections,
        presence_members: m.presence_members,
        presence_subscribers: m.presence_subscribers,
        object_publishers: m.object_publishers,
        object_subscribers: m.object_subscribers,
        presence_clients: m.presence_clients,
    };
    j
}

/// Checks the JSON of one ChannelDetails against gRPC's, field by field,
/// in Ably's names.
fn assert_details(json: &Value, grpc: &pb::ChannelDetails) {
    let want = from_pb(grpc);
    assert_eq!(json["channelId"], Value::from(want.channel_id.clone()));
    assert_eq!(json["status"]["isActive"], Value::from(want.status.is_active));
    let m = &json["status"]["occupancy"]["metrics"];
    let w = want.status.occupancy.metrics;
    for (name, v) in [
        ("connections", w.connections),
        ("publishers", w.publishers),
        ("subscribers", w.subscribers),
        ("presenceConnections", w.presence_connections),
        ("presenceMembers", w.presence_members),
        ("presenceSubscribers", w.presence_subscribers),
        ("objectPublishers", w.object_publishers),
        ("objectSubscribers", w.object_subscribers),
        ("presenceClients", w.presence_clients),
    ] {
        assert_eq!(m[name], Value::from(v), "{name} of {}", want.channel_id);
    }
    assert_eq!(
        m.as_object().expect("metrics object").len(),
        9,
        "exactly the nine metrics"
    );
    let parsed: ChannelDetailsJson = serde_json::from_value(json.clone()).expect("ChannelDetails shape");
    assert_eq!(parsed, want);
}

async fn some_state(fx: &Fx) {
    fx.keep_alive("fe", LONG_TTL_MS).await;
    fx.attach("fe", "c1", "rest:a", &[Mode::Publish, Mode::Subscribe, Mode::Presence])
        .await;
    fx.attach("fe", "c2", "rest:a", &[Mode::Presence, Mode::PresenceSubscribe])
        .await;
    fx.attach("fe", "c3", "rest:a", &[Mode::ObjectPublish, Mode::ObjectSubscribe])
        .await;
    fx.enter("fe", "c1", "rest:a", "alice").await;
    fx.enter("fe", "c2", "rest:a", "alice").await;
    fx.enter("fe", "c2", "rest:a", "bob").await;
    fx.attach("fe", "c1", "rest:b", &[Mode::Subscribe]).await;
    fx.attach("fe", "c1", "rest:sp ace/é", &[Mode::Publish]).await;
}

async fn rest_answers_equal_grpc_answers(h: Harness) {
    let s = h.http_server().await;
    let fx = Fx::new(&s).await;
    some_state(&fx).await;
    for ch in ["rest:a", "rest:b", "rest:sp ace/é", "rest:inactive"] {
        let enc = ch.replace('%', "%25").replace(' ', "%20").replace('/', "%2F");
        let (status, _, json) = get(&s, &format!("/channels/{enc}")).await;
        assert_eq!(status, 200);
        assert_details(&json, &fx.details(ch).await);
    }
    // a page by value and by id, in both orders
    for (query, order) in [
        ("", pb::ListOrder::Name),
        ("&order=connections", pb::ListOrder::ConnectionsDesc),
    ] {
        let (status, link, json) = get(&s, &format!("/channels?prefix=rest:{query}")).await;
        assert_eq!(status, 200);
        assert_eq!(link, None, "one page");
        let grpc = fx
            .list(pb::ListChannelsRequest {
                prefix: "rest:".into(),
                order: order as i32,
                ..Default::default()
            })
            .await
            .unwrap();
        let arr = json.as_array().expect("array");
        assert_eq!(arr.len(), grpc.channels.len());
        assert_eq!(arr.len(), 3);
        for (j, g) in arr.iter().zip(&grpc.channels) {
            assert_details(j, g);
        }
        let (_, _, ids) = get(&s, &format!("/channels?prefix=rest:&by=id{query}")).await;
        let names: Vec<String> = grpc.channels.iter().map(|c| c.channel_id.clone()).collect();
        assert_eq!(ids, serde_json::json!(names));
    }
    // batch read, in request order, inactive channels included
    let names = ["rest:b", "rest:inactive", "rest:a"];
    let r = client()
        .post(format!("{}/channels/batch", s.http_url()))
        .json(&serde_json::json!({ "channels": names }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let json: Value = r.json().await.unwrap();
    let grpc =
        fx.r.clone()
            .batch_get_occupancy(pb::BatchGetOccupancyRequest {
                channels: names.iter().map(|n| n.to_string()).collect(),
            })
            .await
            .unwrap()
            .into_inner();
    let arr = json.as_array().expect("array");
    assert_eq!(arr.len(), 3);
    for (j, g) in arr.iter().zip(&grpc.channels) {
        assert_details(j, g);
    }
    // a channel named "batch" is still readable with GET
    let (status, _, json) = get(&s, "/channels/batch").await;
    assert_eq!(status, 200);
    assert_eq!(json["channelId"], "batch");
    // totals
    let (status, _, json) = get(&s, "/stats").await;
    assert_eq!(status, 200);
    let grpc =
        fx.r.clone()
            .get_stats(pb::GetStatsRequest {})
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "activeChannels": grpc.active_channels,
            "connections": grpc.connections,
            "presenceMembers": grpc.presence_members,
            "sessions": grpc.sessions,
        })
    );
    assert_eq!(
        (
            grpc.active_channels,
            grpc.connections,
            grpc.presence_members,
            grpc.sessions
        ),
        (3, 5, 3, 1)
    );
    // the OpenAPI document is served and describes every route
    let (status, _, doc) = get(&s, "/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/channels",
        "/channels/{channelId}",
        "/channels/batch",
        "/channels/{channelId}/occupancy/stream",
        "/occupancy/stream",
        "/stats",
        "/health",
        "/metrics",
    ] {
        assert!(doc["paths"].get(path).is_some(), "openapi.json lacks {path}");
    }
}

async fn rest_list_walks_2500_channels_without_repeats_or_empty_pages(h: Harness) {
    let s = h.http_server().await;
    let fx = Fx::new(&s).await;
    fx.keep_alive("bulk", LONG_TTL_MS).await;
    let all: Vec<String> = (0..2500).map(|i| format!("walk:{i:05}")).collect();
    for (k, chunk) in all.chunks(500).enumerate() {
        let ops = chunk
            .iter()
            .enumerate()
            .map(|(i, ch)| attach_op(&format!("c{k}-{i}"), ch, &[Mode::Subscribe]))
            .collect();
        fx.apply("bulk", ops).await;
    }
    // one busier channel, to see the busiest-first order
    fx.attach("bulk", "extra", "walk:01234", &[Mode::Subscribe]).await;
    for (first, by) in [
        ("/channels?prefix=walk:&limit=97&by=id", "id"),
        ("/channels?prefix=walk:&limit=1000", "value"),
    ] {
        let mut seen = Vec::new();
        let mut next = Some(first.to_string());
        let mut pages = 0;
        while let Some(path) = next.take() {
            pages += 1;
            assert!(pages <= 100, "too many pages");
            let (status, link, json) = get(&s, &path).await;
            assert_eq!(status, 200, "{path}");
            let arr = json.as_array().expect("array");
            assert!(!arr.is_empty(), "empty page {path}");
            for v in arr {
                seen.push(match by {
                    "id" => v.as_str().unwrap().to_string(),
                    _ => v["channelId"].as_str().unwrap().to_string(),
                });
            }
            if let Some(link) = link {
                let url = link
                    .strip_prefix('<')
                    .and_then(|l| l.split_once(">; rel=\"next\""))
                    .map(|(u, _)| u.to_string())
                    .expect("Link: <...>; rel=\"next\"");
                assert!(url.starts_with("/channels?"), "{url}");
                next = Some(url);
            }
        }
        assert_eq!(seen, all, "every channel once, in byte order (by={by})");
    }
    // busiest first through the Link header too
    let (_, link, json) = get(&s, "/channels?prefix=walk:&order=connections&limit=2&by=id").await;
    assert_eq!(json, serde_json::json!(["walk:01234", "walk:00000"]));
    let url = link
        .expect("next")
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap()
        .to_string();
    let (_, _, json) = get(&s, &url).await;
    assert_eq!(json, serde_json::json!(["walk:00001", "walk:00002"]));
}

async fn expect_error(s: &TestServer, method: &str, path: &str, body: Option<Value>, status: u16, field: Option<&str>) {
    let mut req = match method {
        "GET" => client().get(format!("{}{path}", s.http_url())),
        "POST" => client().post(format!("{}{path}", s.http_url())),
        "DELETE" => client().delete(format!("{}{path}", s.http_url())),
        _ => unreachable!(),
    };
    if let Some(b) = body {
        req = req.body(b.to_string()).header("content-type", "application/json");
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status().as_u16(), status, "{method} {path}");
    let json: Value = r.json().await.expect("json error body");
    let e = &json["error"];
    assert_eq!(e["statusCode"], Value::from(status), "{path}: {json}");
    assert!(e["code"].as_str().is_some_and(|c| !c.is_empty()), "{json}");
    assert!(e["message"].as_str().is_some_and(|c| !c.is_empty()), "{json}");
    match field {
        Some(f) => {
            assert_eq!(e["field"], Value::from(f), "{method} {path}: {json}");
            assert!(e["message"].as_str().unwrap().contains(f), "{json}");
            assert_eq!(e["code"], "INVALID_ARGUMENT");
        }
        None => assert!(e.get("field").is_none(), "{json}"),
    }
}

async fn bad_http_input_gets_a_json_error_naming_the_field(h: Harness) {
    let s = h.http_server().await;
    expect_error(&s, "GET", "/nope", None, 404, None).await;
    expect_error(&s, "GET", "/channels/a/b", None, 404, None).await;
    expect_error(&s, "DELETE", "/channels/a", None, 405, None).await;
    for (path, field) in [
        ("/channels?limit=abc", "limit"),
        ("/channels?limit=0", "limit"),
        ("/channels?limit=1001", "limit"),
        ("/channels?cursor=!!", "cursor"),
        ("/channels?cursor=AAAA", "cursor"),
        ("/channels?by=names", "by"),
        ("/channels?order=size", "order"),
        ("/channels?limit=5&limit=6", "limit"),
        ("/channels?colour=red", "colour"),
        ("/channels?prefix=%01", "prefix"),
        ("/channels/%5Bmeta%5Dx", "channelId"),
        ("/channels/%01", "channelId"),
        ("/channels/%FF", "channelId"),
        ("/stats?x=1", "x"),
        ("/channels/a/occupancy/stream?debounceMs=soon", "debounceMs"),
        ("/channels/a/occupancy/stream?debounceMs=60001", "debounceMs"),
        ("/channels/a/occupancy/stream?categories=votes", "categories[0]"),
        ("/channels/a/occupancy/stream?lastEventId=nope", "lastEventId"),
        ("/channels/%5Bx/occupancy/stream", "channelId"),
        ("/occupancy/stream", "channels"),
        ("/occupancy/stream?channels=a,%5Bb", "channels[1]"),
    ] {
        expect_error(&s, "GET", path, None, 400, Some(field)).await;
    }
    // a cursor of another order
    let fx = Fx::new(&s).await;
    fx.keep_alive("fe", LONG_TTL_MS).await;
    for i in 0..3 {
        fx.attach("fe", "c", &format!("x{i}"), &[Mode::Subscribe]).await;
    }
    let (_, link, _) = get(&s, "/channels?limit=1").await;
    let cursor = link
        .unwrap()
        .split("cursor=")
        .nth(1)
        .unwrap()
        .split('>')
        .next()
        .unwrap()
        .to_string();
    expect_error(
        &s,
        "GET",
        &format!("/channels?order=connections&cursor={cursor}"),
        None,
        400,
        Some("cursor"),
    )
    .await;
    // Last-Event-ID header
    let r = client()
        .get(format!("{}/channels/a/occupancy/stream", s.http_url()))
        .header("last-event-id", "0001.zz")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let json: Value = r.json().await.unwrap();
    assert_eq!(json["error"]["field"], "Last-Event-ID");
    // batch bodies
    let many: Vec<String> = (0..1001).map(|i| format!("c{i}")).collect();
    for (body, field) in [
        (serde_json::json!({ "channels": many }), "channels"),
        (serde_json::json!({ "channels": [] }), "channels"),
        (serde_json::json!({ "channels": ["ok", "[bad"] }), "channels[1]"),
        (serde_json::json!({ "names": ["a"] }), "body"),
        (serde_json::json!(["a"]), "body"),
    ] {
        expect_error(&s, "POST", "/channels/batch", Some(body), 400, Some(field)).await;
    }
    expect_error(
        &s,
        "POST",
        "/channels/other",
        Some(serde_json::json!({"channels": ["a"]})),
        404,
        None,
    )
    .await;
    // nothing above changed anything
    let (_, _, stats) = get(&s, "/stats").await;
    assert_eq!(stats["activeChannels"], 3);
}

/// The sums over every active channel, walked through REST, and the
/// number of channels.
async fn sums_over_channels(s: &TestServer) -> (u64, u64, u64) {
    let mut next = Some("/channels?limit=1000".to_string());
    let (mut n, mut c, mut pm) = (0u64, 0u64, 0u64);
    let mut pages = 0;
    while let Some(path) = next.take() {
        pages += 1;
        assert!(pages < 100);
        let (_, link, json) = get(s, &path).await;
        for d in json.as_array().unwrap() {
            let m = &d["status"]["occupancy"]["metrics"];
            n += 1;
            c += m["connections"].as_u64().unwrap();
            pm += m["presenceMembers"].as_u64().unwrap();
        }
        next = link.map(|l| l.trim_start_matches('<').split('>').next().unwrap().to_string());
    }
    (n, c, pm)
}

async fn stats_now(s: &TestServer) -> StatsJson {
    let (status, _, json) = get(s, "/stats").await;
    assert_eq!(status, 200);
    serde_json::from_value(json).expect("stats shape")
}

async fn stats_equal_the_sum_over_channels_after_load_and_expiries(h: Harness) {
    let s = h.http_server().await;
    let fx = Fx::new(&s).await;
    let seed: u64 = rand::rng().random();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let sessions: Vec<String> = (0..6).map(|i| format!("load-{i}")).collect();
    for sess in &sessions {
        fx.keep_alive(sess, LONG_TTL_MS).await;
    }
    const ALL: [Mode; 6] = [
        Mode::Publish,
        Mode::Subscribe,
        Mode::Presence,
        Mode::PresenceSubscribe,
        Mode::ObjectPublish,
        Mode::ObjectSubscribe,
    ];
    for _ in 0..60 {
        let sess = &sessions[rng.random_range(0..sessions.len())];
        let ops = (0..rng.random_range(1..20))
            .map(|_| {
                // connections are named per session, so none moves
                let conn = format!("{sess}-c{}", rng.random_range(0..8));
                let ch = format!("load:{}", rng.random_range(0..25));
                match rng.random_range(0..10) {
                    0..=4 => {
                        let modes: Vec<Mode> = ALL.iter().copied().filter(|_| rng.random_bool(0.5)).collect();
                        attach_op(&conn, &ch, &[&[Mode::Presence][..], &modes].concat())
                    }
                    5 | 6 => detach_op(&conn, &ch),
                    7 | 8 => enter_op(&conn, &ch, &format!("u{}", rng.random_range(0..4))),
                    _ => leave_op(&conn, &ch, &format!("u{}", rng.random_range(0..4))),
                }
            })
            .collect();
        fx.apply(sess, ops).await;
    }
    let st = stats_now(&s).await;
    let (n, c, pm) = sums_over_channels(&s).await;
    assert!(n > 0 && pm > 0, "the load left something: {n} channels, {pm} members");
    assert_eq!(
        (st.active_channels, st.connections, st.presence_members, st.sessions),
        (n, c, pm, sessions.len() as u64),
        "after the load"
    );
    // half of the sessions get a 1 s lease and run out; the reaper removes
    // what they held
    for sess in &sessions[..3] {
        fx.keep_alive(sess, 1000).await;
    }
    let st = eventually(Duration::from_secs(10), "three leases to expire", || async {
        let st = stats_now(&s).await;
        (st.sessions == 3).then_some(st)
    })
    .await;
    let (n, c, pm) = sums_over_channels(&s).await;
    assert_eq!(
        (st.active_channels, st.connections, st.presence_members),
        (n, c, pm),
        "after expiries"
    );
    for sess in &sessions[3..] {
        assert!(fx.close(sess).await);
    }
    let st = stats_now(&s).await;
    assert_eq!(st, StatsJson::from(occupancy::domain::Totals::default()), "all gone");
}

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
    let mut got: BTreeMap<String, Vec<(u32, u32)>> = BTreeMap::new();
    for _ in 0..3 {
        let e = next_event(&mut pre).await;
        got.entry(e.channel)
            .or_default()
            .push((e.data.metrics.connections, e.data.metrics.presence_members));
    }
    assert_eq!(
        got,
        BTreeMap::from([
            ("live:a".to_string(), vec![(2, 1)]),
            ("live:b".to_string(), vec![(1, 0), (1, 1)]),
        ])
    );
    let mut got: BTreeMap<String, Vec<(u32, u32)>> = BTreeMap::new();
    for _ in 0..4 {
        let e = next_event(&mut all).await;
        got.entry(e.channel)
            .or_default()
            .push((e.data.metrics.connections, e.data.metrics.presence_members));
    }
    assert_eq!(
        got,
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

fn scrape(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("prometheus text format")
}

fn sample(sc: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    sc.samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

async fn metrics_text(s: &TestServer) -> String {
    let r = client().get(format!("{}/metrics", s.http_url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The value of the line of `text` that starts with `series ` (a series
/// with its labels written out), or 0.
fn raw(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

async fn metrics_parse_and_move_with_load(h: Harness) {
    let s = h.http_server().await;
    let fx = Fx::new(&s).await;
    let before_text = metrics_text(&s).await;
    let before = scrape(&before_text);
    assert!(!before.samples.is_empty());
    let stats_ok = [("method", "GET"), ("route", "/stats"), ("status", "200")];
    let n0 = sample(&before, "occupancy_http_requests_total", &stats_ok);
    for _ in 0..7 {
        get(&s, "/stats").await;
    }
    for _ in 0..3 {
        get(&s, "/channels?limit=0").await;
    }
    let grpc_stats = [("method", "/occupancy.v1.OccupancyService/GetStats"), ("code", "OK")];
    let g0 = sample(&before, "occupancy_grpc_requests_total", &grpc_stats);
    for _ in 0..4 {
        fx.r.clone().get_stats(pb::GetStatsRequest {}).await.unwrap();
    }
    let bad =
        fx.r.clone()
            .get_occupancy(pb::GetOccupancyRequest { channel: "[x".into() })
            .await;
    assert!(bad.is_err());
    // a session that writes once, then is left to expire
    let reaped0 = sample(&before, "occupancy_sessions_reaped_total", &[]);
    fx.attach("short", "c1", "m:1", &[Mode::Subscribe]).await;
    let mid = scrape(&metrics_text(&s).await);
    assert_eq!(sample(&mid, "occupancy_channel_connections", &[]), 1.0);
    assert_eq!(sample(&mid, "occupancy_sessions", &[]), 1.0);
    assert_eq!(sample(&mid, "occupancy_health_serving", &[]), 1.0);
    let after = eventually(Duration::from_secs(10), "the reaper to expire the session", || async {
        let sc = scrape(&metrics_text(&s).await);
        (sample(&sc, "occupancy_sessions_reaped_total", &[]) > reaped0).then_some(sc)
    })
    .await;
    assert_eq!(sample(&after, "occupancy_sessions_reaped_total", &[]), reaped0 + 1.0);
    assert_eq!(sample(&after, "occupancy_http_requests_total", &stats_ok), n0 + 7.0);
    assert_eq!(
        sample(
            &after,
            "occupancy_http_requests_total",
            &[("route", "/channels"), ("status", "400")]
        ),
        3.0
    );
    assert_eq!(sample(&after, "occupancy_grpc_requests_total", &grpc_stats), g0 + 4.0);
    assert_eq!(
        sample(
            &after,
            "occupancy_grpc_requests_total",
            &[
                ("method", "/occupancy.v1.OccupancyService/GetOccupancy"),
                ("code", "INVALID_ARGUMENT")
            ]
        ),
        1.0
    );
    assert_eq!(sample(&after, "occupancy_sessions", &[]), 0.0);
    assert_eq!(sample(&after, "occupancy_channel_connections", &[]), 0.0);
    if matches!(h.backend, crate::support::Backend::Redis(_)) {
        // the Redis store's calls (process-wide: other tests' replicas in
        // this process count too, so only rises are checked)
        let text = metrics_text(&s).await;
        for series in [
            "occupancy_redis_call_duration_seconds_count{call=\"apply\"}",
            "occupancy_redis_call_duration_seconds_count{call=\"stats\"}",
            "occupancy_redis_call_duration_seconds_count{call=\"reap\"}",
            "occupancy_group_commit_writes_count",
        ] {
            assert!(raw(&text, series) > raw(&before_text, series), "{series} rose");
        }
    }
    // latency histograms count the same requests
    assert_eq!(
        after
            .samples
            .iter()
            .filter(|s| s.metric == "occupancy_http_request_duration_seconds" && s.labels.get("route") == Some("/stats"))
            .map(|s| match &s.value {
                prometheus_parse::Value::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
                _ => 0.0,
            })
            .sum::<f64>(),
        n0 + 7.0
    );
}

/// The subscription's `live` and heartbeat messages reach an SSE client as
/// comments (`: live` after the snapshot, `: heartbeat` on a quiet stream,
/// here every 200 ms), never as events or errors, and the stream still
/// carries the next change after several heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_turns_live_and_heartbeats_into_comments() {
    use crate::support::process::Proc;
    use crate::support::{ReadClient, WriteClient};
    let p = Proc::spawn(&["--http-listen", "127.0.0.1:0", "--stream-heartbeat", "200ms"]);
    let http = p.http_addr();
    let ch = tonic::transport::Channel::from_shared(p.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let fx = Fx {
        r: ReadClient::new(ch.clone()),
        w: WriteClient::new(ch),
    };
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
