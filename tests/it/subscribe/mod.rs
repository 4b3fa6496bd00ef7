//! SubscribeOccupancy, against both stores: snapshot, order, filters,
//! debounce, prefixes, resume on another replica, slow subscribers,
//! shutdown; and, on Redis, how replicas read the event log.

mod redis_log;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use occupancy::proto::v1 as pb;
use pb::Mode;
use tonic::Code;

use crate::fixture::*;
use crate::support::sub::{m, req, subscribe};
use crate::support::Harness;

const TTL: Duration = Duration::from_secs(30);

all_stores!(
    snapshot_first_then_every_change_in_order,
    categories_filter_events,
    zero_flips_skip_the_debounce,
    debounce_sends_the_trailing_edge,
    prefix_follows_new_channels,
    resume_on_another_replica_misses_nothing,
    stalled_subscriber_stays_bounded_then_catches_up,
    shutdown_ends_streams_with_unavailable,
    bad_subscriptions_are_rejected,
    all_channels_covers_every_channel_and_later_ones,
);

/// `all_channels`: the snapshot holds every active channel (2,600 here:
/// three pages of the snapshot's listing walk), then changes of any
/// channel arrive, including channels created after subscribing.
async fn all_channels_covers_every_channel_and_later_ones(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    let ops: Vec<_> = (0..2_600)
        .map(|i| attach_op(&format!("b{i}"), &format!("bulk:{i:04}"), &[]))
        .collect();
    fx.apply("fe", ops).await;
    fx.attach("fe", "c1", "zzz", &[Mode::Publish]).await;
    let mut sub = subscribe(
        &s,
        pb::SubscribeOccupancyRequest {
            all_channels: true,
            channels: vec!["named:inactive".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut snapshot = HashMap::new();
    sub.until(|e| {
        snapshot.insert(e.channel.clone(), m(e));
        snapshot.len() == 2_602
    })
    .await;
    assert_eq!(snapshot["bulk:0000"][0], 1);
    assert_eq!(snapshot["bulk:2599"][0], 1);
    assert_eq!(snapshot["zzz"][..2], [1, 1]);
    assert_eq!(snapshot["named:inactive"], [0; 9], "named channels still come as zero");
    sub.quiet_for(Duration::from_millis(300)).await;
    // channels created later, under no common prefix
    fx.attach("fe", "c2", "late", &[]).await;
    let e = sub.next().await;
    assert_eq!((e.channel.as_str(), m(&e)[0]), ("late", 1));
    fx.attach("fe", "c2", "a", &[]).await;
    let e = sub.next().await;
    assert_eq!((e.channel.as_str(), m(&e)[0]), ("a", 1));
    fx.detach("fe", "b7", "bulk:0007").await;
    let e = sub.next().await;
    assert_eq!((e.channel.as_str(), m(&e)), ("bulk:0007", [0; 9]));
    drop(sub);
}

async fn snapshot_first_then_every_change_in_order(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    fx.attach("fe", "c1", "a", &[Mode::Publish]).await;
    fx.attach("fe", "c1", "b", &[Mode::Subscribe]).await;
    let mut sub = subscribe(&s, req(&["b", "a", "never"])).await.unwrap();
    // the snapshot: one event per named channel, inactive ones as zero
    let mut snap = HashMap::new();
    for _ in 0..3 {
        let e = sub.next().await;
        assert_eq!(e.name, "[meta]occupancy");
        assert!(e.timestamp_ms > 0);
        assert!(!e.id.is_empty());
        snap.insert(e.channel.clone(), m(&e));
    }
    assert_eq!(snap["a"], [1, 1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(snap["b"], [1, 0, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(snap["never"], [0; 9]);
    // each change, waited for before the next one: every one arrives
    let mut last_id = String::new();
    for i in 2..=30u32 {
        fx.attach("fe", &format!("c{i}"), "a", &[]).await;
        let e = sub.next().await;
        assert_eq!((e.channel.as_str(), m(&e)[0]), ("a", i));
        assert!(e.id > last_id, "ids increase per channel");
        last_id = e.id;
    }
    // a burst: events arrive in order and end on the final state
    let mut ops = Vec::new();
    for i in 31..=130 {
        ops.push(attach_op(&format!("c{i}"), "a", &[]));
    }
    for chunk in ops.chunks(10) {
        fx.apply("fe", chunk.to_vec()).await;
    }
    let events = sub.until(|e| m(e)[0] == 130).await;
    let counts: Vec<u32> = events.iter().map(|e| m(e)[0]).collect();
    assert!(counts.windows(2).all(|w| w[0] < w[1]), "never backwards: {counts:?}");
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));
    // the channel's detach to zero is an event too
    fx.close("fe").await;
    let events = sub.until(|e| e.channel == "b" && m(e) == [0; 9]).await;
    assert!(events.iter().all(|e| e.channel != "never"));
}

async fn categories_filter_events(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    let mut r = req(&["x"]);
    r.categories = vec![
        pb::MetricCategory::Publishers as i32,
        pb::MetricCategory::PresenceMembers as i32,
    ];
    let mut sub = subscribe(&s, r).await.unwrap();
    assert_eq!(m(&sub.next().await), [0; 9]);
    // subscribers come and go: not a selected category
    fx.attach("fe", "s1", "x", &[Mode::Subscribe]).await;
    fx.attach("fe", "s2", "x", &[Mode::Subscribe, Mode::Presence]).await;
    // a publisher is; the event carries the full metrics
    fx.attach("fe", "p1", "x", &[Mode::Publish]).await;
    let e = sub.next().await;
    assert_eq!(m(&e), [3, 1, 2, 1, 0, 0, 0, 0, 0]);
    fx.enter("fe", "s2", "x", "alice").await;
    assert_eq!(m(&sub.next().await)[4], 1);
    fx.detach("fe", "s1", "x").await;
    fx.attach("fe", "p2", "x", &[Mode::Publish]).await;
    let e = sub.next().await;
    assert_eq!(
        m(&e),
        [3, 2, 1, 1, 1, 0, 0, 0, 1],
        "the subscriber change was not sent on its own"
    );
}

async fn zero_flips_skip_the_debounce(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    fx.attach("fe", "c1", "x", &[Mode::Subscribe]).await;
    let mut r = req(&["x"]);
    r.debounce_ms = 5_000;
    let mut sub = subscribe(&s, r).await.unwrap();
    assert_eq!(m(&sub.next().await)[0], 1);
    // a plain count change opens nothing new... the first publisher is a
    // flip and goes at once, well inside the 5 s window
    let started = Instant::now();
    fx.attach("fe", "c2", "x", &[Mode::Publish]).await;
    let e = sub.next().await;
    assert_eq!(m(&e)[1], 1);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    // a mode change that removes the last subscriber is a flip too
    let started = Instant::now();
    fx.attach("fe", "c1", "x", &[Mode::Presence]).await;
    let e = sub.next().await;
    assert_eq!(m(&e), [2, 1, 0, 1, 0, 0, 0, 0, 0]);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
}

async fn debounce_sends_the_trailing_edge(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    fx.attach("fe", "c0", "x", &[Mode::Subscribe]).await;
    let mut r = req(&["x"]);
    r.debounce_ms = 400;
    let mut sub = subscribe(&s, r).await.unwrap();
    assert_eq!(m(&sub.next().await)[0], 1);
    // twenty changes that flip nothing, in quick succession
    for i in 1..=20 {
        fx.attach("fe", &format!("c{i}"), "x", &[Mode::Subscribe]).await;
    }
    let events = sub.until(|e| m(e)[0] == 21).await;
    assert!(events.len() < 20, "{} events: not debounced", events.len());
    assert_eq!(m(events.last().unwrap()), [21, 0, 21, 0, 0, 0, 0, 0, 0]);
    // and nothing stale follows
    sub.quiet_for(Duration::from_millis(600)).await;
}

async fn prefix_follows_new_channels(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    fx.attach("fe", "c1", "room:a", &[]).await;
    fx.attach("fe", "c1", "other", &[]).await;
    let mut sub = subscribe(
        &s,
        pb::SubscribeOccupancyRequest {
            prefix: "room:".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let e = sub.next().await;
    assert_eq!((e.channel.as_str(), m(&e)[0]), ("room:a", 1));
    fx.attach("fe", "c2", "other", &[]).await;
    fx.attach("fe", "c2", "roo", &[]).await;
    fx.attach("fe", "c2", "room:b", &[]).await;
    let e = sub.next().await;
    assert_eq!(
        (e.channel.as_str(), m(&e)[0]),
        ("room:b", 1),
        "channels outside the prefix are not sent"
    );
    fx.detach("fe", "c2", "room:b").await;
    let e = sub.next().await;
    assert_eq!((e.channel.as_str(), m(&e)), ("room:b", [0; 9]));
    fx.attach("fe", "c3", "room:ü", &[]).await;
    assert_eq!(sub.next().await.channel, "room:ü");
}

async fn resume_on_another_replica_misses_nothing(h: Harness) {
    let a = h.server().await;
    let b = h.server().await;
    let fx = Fx::new(&a).await;
    fx.attach("fe", "c1", "x", &[]).await;
    fx.attach("fe", "c1", "y", &[]).await;
    fx.attach("fe", "c1", "z", &[]).await;
    let mut sub = subscribe(&a, req(&["x", "y"])).await.unwrap();
    sub.next().await;
    let mut last = sub.next().await;
    fx.attach("fe", "c2", "x", &[]).await;
    last = sub
        .until(|e| e.channel == "x" && m(e)[0] == 2)
        .await
        .pop()
        .unwrap_or(last);
    drop(sub);
    // while disconnected: x changes twice, z (not followed) changes, y not
    fx.attach("fe", "c3", "x", &[]).await;
    fx.attach("fe", "c4", "x", &[Mode::Publish]).await;
    fx.attach("fe", "c2", "z", &[]).await;
    let mut r = req(&["x", "y"]);
    r.resume_from = last.id.clone();
    let mut sub = subscribe(&b, r).await.unwrap();
    // x with its current metrics, once; nothing for y, which did not change
    let e = sub.next().await;
    assert_eq!((e.channel.as_str(), m(&e)), ("x", [4, 1, 0, 0, 0, 0, 0, 0, 0]));
    sub.quiet_for(Duration::from_millis(300)).await;
    // live again, through replica b, for writes on replica a
    fx.detach("fe", "c1", "y").await;
    let e = sub.next().await;
    assert_eq!((e.channel.as_str(), m(&e)), ("y", [0; 9]));
    // resuming from the newest id, on the other replica: nothing to replay
    let mut r = req(&["x", "y"]);
    r.resume_from = e.id;
    let mut again = subscribe(&a, r).await.unwrap();
    again.quiet_for(Duration::from_millis(300)).await;
}

async fn stalled_subscriber_stays_bounded_then_catches_up(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    let channels: Vec<String> = (0..10).map(|i| format!("hot-{i}")).collect();
    let names: Vec<&str> = channels.iter().map(String::as_str).collect();
    let mut sub = subscribe(&s, req(&names)).await.unwrap();
    for _ in 0..10 {
        sub.next().await;
    }
    // 100,000 changes while the client reads nothing for 10 s
    let stalled = Instant::now();
    let mut peak = 0;
    for round in 0..100 {
        let mut ops = Vec::with_capacity(1_000);
        for i in 0..1_000 {
            let ch = &channels[i % 10];
            let conn = format!("c{}", (round * 1_000 + i) % 37);
            if (round + i) % 2 == 0 {
                ops.push(attach_op(&conn, ch, &[Mode::Subscribe]));
            } else {
                ops.push(detach_op(&conn, ch));
            }
        }
        fx.apply("fe", ops).await;
        peak = peak.max(s.hub.pending());
    }
    // the rest of the 10 s: the scenario, not a wait for a signal
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(stalled.elapsed())).await;
    peak = peak.max(s.hub.pending());
    let bound = occupancy::fanout::hub::INBOX_QUEUE + channels.len();
    assert!(peak <= bound, "{peak} events waited in the hub, bound {bound}");
    // now read: every channel ends on its current state
    let truth: HashMap<String, [u32; 9]> = {
        let mut t = HashMap::new();
        for c in &channels {
            t.insert(c.clone(), fx.get(c).await);
        }
        t
    };
    let latest = sub.settle(Duration::from_millis(500)).await;
    for c in &channels {
        assert_eq!(latest.get(c), truth.get(c), "{c} ends on its current state");
    }
}

async fn shutdown_ends_streams_with_unavailable(h: Harness) {
    let s = h.server().await;
    let mut sub = subscribe(&s, req(&["x"])).await.unwrap();
    sub.next().await;
    let stopping = tokio::spawn(s.stop());
    let e = sub.next_within(Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(e.unwrap_err().code(), Code::Unavailable);
    stopping.await.unwrap().unwrap();
}

async fn bad_subscriptions_are_rejected(h: Harness) {
    let s = h.server().await;
    let bad: Vec<(pb::SubscribeOccupancyRequest, &str)> = vec![
        (pb::SubscribeOccupancyRequest::default(), "channels"),
        (
            pb::SubscribeOccupancyRequest {
                channels: (0..1_001).map(|i| format!("c{i}")).collect(),
                ..Default::default()
            },
            "channels",
        ),
        (
            pb::SubscribeOccupancyRequest {
                channels: (0..100_000).map(|i| format!("c{i}")).collect(),
                ..Default::default()
            },
            "channels",
        ),
        (req(&["ok", "[meta]x"]), "channels[1]"),
        (
            pb::SubscribeOccupancyRequest {
                categories: vec![0],
                ..req(&["x"])
            },
            "categories[0]",
        ),
        (
            pb::SubscribeOccupancyRequest {
                categories: vec![77],
                ..req(&["x"])
            },
            "categories[0]",
        ),
        (
            pb::SubscribeOccupancyRequest {
                debounce_ms: 60_001,
                ..req(&["x"])
            },
            "debounce_ms",
        ),
        (
            pb::SubscribeOccupancyRequest {
                resume_from: "garbage".into(),
                ..req(&["x"])
            },
            "resume_from",
        ),
        (
            pb::SubscribeOccupancyRequest {
                prefix: "a\u{1}".into(),
                ..Default::default()
            },
            "prefix",
        ),
        (
            pb::SubscribeOccupancyRequest {
                prefix: "a".into(),
                all_channels: true,
                ..Default::default()
            },
            "all_channels",
        ),
    ];
    for (r, field) in bad {
        let got = subscribe(&s, r).await.map(|_| ());
        assert_invalid(got, field);
    }
    assert_eq!(s.hub.registrations(), 0, "nothing stays registered");
}
