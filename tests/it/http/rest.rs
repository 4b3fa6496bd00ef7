//! REST routes: answers equal gRPC's field by field, paging through
//! `Link` headers, and JSON errors naming the field.

use occupancy::http::json::ChannelDetailsJson;
use occupancy::proto::v1 as pb;
use pb::Mode;
use serde_json::Value;

use super::{client, get, LONG_TTL_MS, TTL};
use crate::fixture::*;
use crate::support::{metrics, Harness, TestServer};

both_stores!(
    rest_answers_equal_grpc_answers,
    rest_list_walks_2500_channels_without_repeats_or_empty_pages,
    bad_http_input_gets_a_json_error_naming_the_field,
);

/// gRPC's ChannelDetails as the HTTP side's JSON type, and its metrics in
/// the order of [`metrics::JSON_NAMES`].
fn from_pb(d: &pb::ChannelDetails) -> (ChannelDetailsJson, [u32; 9]) {
    let st = d.status.as_ref().expect("status");
    let m = st.occupancy.as_ref().and_then(|o| o.metrics.as_ref()).expect("metrics");
    let mut j = ChannelDetailsJson::new(d.channel_id.clone(), Default::default());
    j.status.is_active = st.is_active;
    j.status.occupancy.metrics = metrics::json(m);
    (j, arr(m))
}

/// Checks the JSON of one ChannelDetails against gRPC's, field by field,
/// in Ably's names.
fn assert_details(json: &Value, grpc: &pb::ChannelDetails) {
    let (want, values) = from_pb(grpc);
    assert_eq!(json["channelId"], Value::from(want.channel_id.clone()));
    assert_eq!(json["status"]["isActive"], Value::from(want.status.is_active));
    let m = &json["status"]["occupancy"]["metrics"];
    for (name, v) in metrics::JSON_NAMES.into_iter().zip(values) {
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
        ("/channels?prefix=walk:&limit=250&envelope=json", "envelope"),
    ] {
        let mut seen = Vec::new();
        let mut next = Some(first.to_string());
        let mut pages = 0;
        while let Some(path) = next.take() {
            pages += 1;
            assert!(pages <= 100, "too many pages");
            let (status, link, json) = get(&s, &path).await;
            assert_eq!(status, 200, "{path}");
            let arr = if by == "envelope" {
                // the page and its cursor in the body, the Link header too
                assert_eq!(json["statusCode"], 200, "{json}");
                assert_eq!(json["link"].as_str(), link.as_deref(), "body and header agree");
                match json["nextCursor"].as_str() {
                    Some(cursor) => {
                        assert!(link.is_some(), "a cursor in the body, none in the header");
                        let qs = serde_urlencoded::to_string([("cursor", cursor)]).unwrap();
                        next = Some(format!("/channels?prefix=walk:&limit=250&envelope=json&{qs}"));
                    }
                    None => assert!(link.is_none(), "a Link header but no cursor in the body"),
                }
                json["response"].as_array().expect("response array")
            } else {
                json.as_array().expect("array")
            };
            assert!(!arr.is_empty(), "empty page {path}");
            for v in arr {
                seen.push(match by {
                    "id" => v.as_str().unwrap().to_string(),
                    _ => v["channelId"].as_str().unwrap().to_string(),
                });
            }
            if let Some(link) = link.filter(|_| by != "envelope") {
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
        ("/channels?envelope=xml", "envelope"),
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
