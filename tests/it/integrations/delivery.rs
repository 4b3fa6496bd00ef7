//! Deliveries on one replica, both stores: filtered channels only, correct
//! metrics, valid signatures, batched limits, the vacated delay and the
//! debounce.

use std::time::{Duration, Instant};

use occupancy::integrations::{payload, Rule, RuleSpec, Staged};
use occupancy::proto::v1::Mode as PbMode;

use super::store::{ev, metrics, rule_ref, version};
use super::{kinds, of, rule_for};
use crate::fixture::Fx;
use crate::support::receiver::{Behaviour, Receiver};
use crate::support::Harness;

const WAIT: Duration = Duration::from_secs(15);
const TTL: Duration = Duration::from_secs(30);

fn all_events() -> Option<Vec<String>> {
    Some(vec![
        "channel.occupancy".into(),
        "channel.occupied".into(),
        "channel.vacated".into(),
    ])
}

async fn filtered_signed_events_with_metrics(h: Harness) {
    let store = h.store();
    let server = occupancy_server(&h, store.clone()).await;
    let fx = Fx::new(&server).await;
    let rx = Receiver::start().await;
    let rule = rule_for(
        store.as_ref(),
        &fx,
        &rx,
        RuleSpec {
            channels: Some(vec!["rooms:*".into()]),
            events: all_events(),
            vacated_delay_ms: Some(0),
            headers: Some([("x-team".to_string(), "occupancy".to_string())].into()),
            ..RuleSpec::default()
        },
    )
    .await;

    fx.attach("s1", "c1", "rooms:a", &[PbMode::Subscribe, PbMode::Presence])
        .await;
    fx.enter("s1", "c1", "rooms:a", "alice").await;
    fx.attach("s1", "c1", "lobby", &[PbMode::Subscribe]).await;
    fx.detach("s1", "c1", "rooms:a").await;
    fx.detach("s1", "c1", "lobby").await;
    rx.wait_for(WAIT, "rooms:a vacated", |d| {
        d.iter()
            .any(|(_, e)| e["channel"] == "rooms:a" && e["type"] == "channel.vacated")
    })
    .await;

    let events = of(&rx, "rooms:a");
    assert_eq!(
        kinds(&events),
        vec![
            ("channel.occupied".to_string(), 1),
            ("channel.occupancy".to_string(), 1),
            ("channel.occupancy".to_string(), 1),
            ("channel.occupancy".to_string(), 0),
            ("channel.vacated".to_string(), 0),
        ]
    );
    // the presence member shows in the third event, in Ably's names
    let m = &events[2]["data"]["metrics"];
    assert_eq!(
        (m["presenceMembers"].as_u64(), m["subscribers"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(m["presenceConnections"].as_u64(), Some(1));
    assert_eq!(events[0]["ruleId"], rule.id.as_str());
    assert!(of(&rx, "lobby").is_empty(), "lobby is not covered by rooms:*");
    let requests = rx.requests();
    assert!(requests.iter().all(|r| r.valid), "every signature verifies");
    assert!(requests
        .iter()
        .all(|r| r.headers.get("x-team").is_some_and(|v| v == "occupancy")));
    // event ids increase per rule
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort_by_key(|id| {
        let pos = id.rsplit(':').next().unwrap();
        let (ms, seq) = pos.split_once('-').unwrap();
        (ms.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap())
    });
    assert_eq!(ids, sorted);
}

async fn batched_mode_keeps_its_size_and_rate(h: Harness) {
    let store = h.store();
    let server = occupancy_server(&h, store.clone()).await;
    let fx = Fx::new(&server).await;
    let rx = Receiver::start().await;
    let interval = 400;
    rule_for(
        store.as_ref(),
        &fx,
        &rx,
        RuleSpec {
            channels: Some(vec!["rooms:*".into()]),
            mode: Some("batched".into()),
            max_events: Some(7),
            interval_ms: Some(interval),
            ..RuleSpec::default()
        },
    )
    .await;
    let first = rx.requests().len();
    for i in 0..20 {
        fx.attach("s1", &format!("c{i}"), &format!("rooms:b{i}"), &[PbMode::Subscribe])
            .await;
    }
    rx.wait_for(WAIT, "20 occupancy events", |d| {
        d.iter()
            .filter(|(_, e)| e["channel"].as_str().unwrap_or("").starts_with("rooms:b"))
            .count()
            >= 20
    })
    .await;
    let requests = rx.requests()[first..].to_vec();
    assert!(requests.len() >= 3, "20 events in batches of at most 7");
    for r in &requests {
        let n = r.body["items"].as_array().expect("a batch body").len();
        assert!((1..=7).contains(&n), "batch of {n}");
        assert_eq!(r.body["type"], "batch");
        assert!(r.valid);
    }
    for pair in requests.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        // request starts are at least the interval apart; arrival times
        // may differ from start times by scheduling noise
        assert!(
            gap >= Duration::from_millis(interval - 50),
            "two batches {gap:?} apart, interval {interval} ms"
        );
    }
}

async fn vacated_delay_is_cancelled_by_a_quick_reattach(h: Harness) {
    let store = h.store();
    let server = occupancy_server(&h, store.clone()).await;
    let fx = Fx::new(&server).await;
    let rx = Receiver::start().await;
    let delay = 1_500;
    rule_for(
        store.as_ref(),
        &fx,
        &rx,
        RuleSpec {
            channels: Some(vec!["rooms:*".into()]),
            events: Some(vec!["channel.occupied".into(), "channel.vacated".into()]),
            vacated_delay_ms: Some(delay),
            ..RuleSpec::default()
        },
    )
    .await;
    fx.attach("s1", "c1", "rooms:v", &[PbMode::Subscribe]).await;
    rx.wait_for(WAIT, "occupied", |d| d.iter().any(|(_, e)| e["channel"] == "rooms:v"))
        .await;
    // vacated and re-occupied at once: neither is sent
    fx.detach("s1", "c1", "rooms:v").await;
    fx.attach("s1", "c2", "rooms:v", &[PbMode::Subscribe]).await;
    // then vacated for good
    fx.detach("s1", "c2", "rooms:v").await;
    let left = Instant::now();
    rx.wait_for(WAIT, "vacated", |d| {
        d.iter()
            .any(|(_, e)| e["channel"] == "rooms:v" && e["type"] == "channel.vacated")
    })
    .await;
    let waited = left.elapsed();
    assert!(
        waited >= Duration::from_millis(delay - 100),
        "vacated sent after {waited:?}, before its delay"
    );
    assert_eq!(
        kinds(&of(&rx, "rooms:v")),
        vec![("channel.occupied".to_string(), 1), ("channel.vacated".to_string(), 0)]
    );
}

async fn debounce_coalesces_but_never_delays_a_zero_flip(h: Harness) {
    let store = h.store();
    let server = occupancy_server(&h, store.clone()).await;
    let fx = Fx::new(&server).await;
    let rx = Receiver::start().await;
    let debounce = 4_000;
    rule_for(
        store.as_ref(),
        &fx,
        &rx,
        RuleSpec {
            channels: Some(vec!["rooms:*".into()]),
            debounce_ms: Some(debounce),
            ..RuleSpec::default()
        },
    )
    .await;
    let start = Instant::now();
    fx.attach("s1", "c1", "rooms:d", &[PbMode::Subscribe]).await;
    rx.wait_for(WAIT, "first event", |d| {
        d.iter().any(|(_, e)| e["channel"] == "rooms:d")
    })
    .await;
    // three changes that flip nothing, then the channel empties
    fx.attach("s1", "c2", "rooms:d", &[PbMode::Subscribe]).await;
    fx.attach("s1", "c3", "rooms:d", &[PbMode::Subscribe]).await;
    fx.detach("s1", "c3", "rooms:d").await;
    fx.detach("s1", "c2", "rooms:d").await;
    fx.detach("s1", "c1", "rooms:d").await;
    rx.wait_for(WAIT, "the zero flip", |d| {
        d.iter()
            .any(|(_, e)| e["channel"] == "rooms:d" && e["data"]["metrics"]["connections"] == 0)
    })
    .await;
    assert!(
        start.elapsed() < Duration::from_millis(debounce),
        "a change to zero waited for the debounce ({:?})",
        start.elapsed()
    );
    // the held changes were coalesced into the zero
    assert_eq!(
        kinds(&of(&rx, "rooms:d")),
        vec![
            ("channel.occupancy".to_string(), 1),
            ("channel.occupancy".to_string(), 0)
        ]
    );
    // a change that flips nothing, with nothing after it, waits the window
    fx.attach("s1", "c1", "rooms:e", &[PbMode::Subscribe]).await;
    rx.wait_for(WAIT, "rooms:e", |d| d.iter().any(|(_, e)| e["channel"] == "rooms:e"))
        .await;
    let held = Instant::now();
    fx.attach("s1", "c2", "rooms:e", &[PbMode::Subscribe]).await;
    rx.wait_for(WAIT, "the held change", |d| {
        d.iter()
            .any(|(_, e)| e["channel"] == "rooms:e" && e["data"]["metrics"]["connections"] == 2)
    })
    .await;
    assert!(held.elapsed() >= Duration::from_millis(debounce - 200));
}

async fn a_takeover_resends_one_channels_batches_in_turn(h: Harness) {
    let store = h.store();
    let ints = store.integrations().expect("the store keeps integrations");
    let rx = Receiver::start().await;
    // every request is answered after a while: two of one channel in
    // flight at once would arrive within that while
    let delay = Duration::from_millis(200);
    rx.set(Behaviour::Delay(delay.as_millis() as u64));
    let rule = Rule::create(
        RuleSpec {
            target: Some(rx.url.clone()),
            channels: Some(vec!["rooms:*".into()]),
            events: Some(vec!["channel.occupancy".into()]),
            ..RuleSpec::default()
        },
        0,
    )
    .expect("valid rule");
    ints.put_rule(&rule, true).await.expect("put rule");
    rx.set_secret(&rule.secret);
    // what a holder that died leaves: three changes of one channel, the
    // first two staged (the second staged before the first's delivery
    // was recorded)
    let events: Vec<_> = (1..=3)
        .map(|i| ev(&format!("{i}-0"), "rooms:x", metrics(i, 0, 0), &[0]))
        .collect();
    let v = version(ints.as_ref()).await;
    ints.enqueue(v, 0, &[rule_ref(&rule)], &events).await.expect("enqueue");
    let queued = ints.read(&rule.id, None, 10).await.expect("read");
    assert_eq!(queued.len(), 3);
    for e in &queued[..2] {
        let batch = Staged {
            id: payload::batch_id(&rule.id, e),
            entries: vec![e.clone()],
        };
        ints.stage(&rule.id, &batch).await.expect("stage");
    }

    let _server = occupancy_server(&h, store.clone()).await;
    rx.wait_for(WAIT, "all three changes", |d| d.len() >= 3).await;
    let requests = rx.requests();
    let connections: Vec<u64> = kinds(&of(&rx, "rooms:x")).into_iter().map(|(_, c)| c).collect();
    assert_eq!(connections, vec![1, 2, 3], "in the channel's order");
    for pair in requests.windows(2) {
        assert!(
            pair[1].at.duration_since(pair[0].at) >= delay,
            "each request waits for the answer to the one before"
        );
    }
    assert_eq!(
        requests[0].id,
        payload::batch_id(&rule.id, &queued[0]),
        "resent under its id"
    );
}

async fn occupancy_server(
    h: &Harness,
    store: std::sync::Arc<dyn occupancy::store::Store>,
) -> crate::support::TestServer {
    crate::support::TestServer::start(h.config(), store).await
}

both_stores!(
    filtered_signed_events_with_metrics,
    batched_mode_keeps_its_size_and_rate,
    vacated_delay_is_cancelled_by_a_quick_reattach,
    debounce_coalesces_but_never_delays_a_zero_flip,
    a_takeover_resends_one_channels_batches_in_turn,
);
