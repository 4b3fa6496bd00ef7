//! Deliveries under faults, three replicas on one store: a failing
//! receiver, a receiver that never answers (other rules go on; its events
//! reach the dead letters and can be replayed), Redis restarted, and the
//! replica holding deliveries SIGKILLed mid-batch.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use occupancy::integrations::{Kind, RuleSpec};
use occupancy::proto::v1 as pb;
use occupancy::proto::v1::Mode as PbMode;
use pb::integration_service_client::IntegrationServiceClient;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use super::{kinds, rule_for, PROBE};
use crate::fixture::Fx;
use crate::support::receiver::{Behaviour, Receiver};
use crate::support::{Harness, TestServer};

const TTL: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(30);

/// The events a rule over every kind (vacated delay 0) must deliver for a
/// channel whose connections went through `counts` (each a change).
pub fn expected(counts: &[u32]) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut prev = 0;
    for &now in counts {
        if prev == 0 && now > 0 {
            out.push((Kind::Occupied.name().to_string(), u64::from(now)));
        }
        out.push((Kind::Occupancy.name().to_string(), u64::from(now)));
        if prev > 0 && now == 0 {
            out.push((Kind::Vacated.name().to_string(), 0));
        }
        prev = now;
    }
    out
}

/// Delivered events per channel, each event once (by its id), in order of
/// first arrival; panics if an event came twice under two `webhook-id`s.
pub fn per_channel(delivered: &[(String, Value)]) -> BTreeMap<String, Vec<Value>> {
    let mut first_id: HashMap<String, String> = HashMap::new();
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (webhook_id, e) in delivered {
        let id = e["id"].as_str().expect("event id").to_string();
        match first_id.get(&id) {
            Some(w) => assert_eq!(w, webhook_id, "event {id} repeated under another webhook-id"),
            None => {
                first_id.insert(id, webhook_id.clone());
                let ch = e["channel"].as_str().expect("channel").to_string();
                if ch != PROBE {
                    out.entry(ch).or_default().push(e.clone());
                }
            }
        }
    }
    out
}

/// Sequential random attaches and detaches through random replicas over
/// `channels` channels; the connection counts each channel went through.
pub async fn random_load(fxs: &[Fx], channels: usize, ops: usize, seed: u64) -> BTreeMap<String, Vec<u32>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut attached: HashMap<String, Vec<String>> = HashMap::new();
    let mut counts: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for i in 0..ops {
        let fx = &fxs[rng.random_range(0..fxs.len())];
        let ch = format!("rooms:f{}", rng.random_range(0..channels));
        let conns = attached.entry(ch.clone()).or_default();
        let m = if conns.is_empty() || rng.random_bool(0.55) {
            let conn = format!("c{i}");
            conns.push(conn.clone());
            fx.attach("load", &conn, &ch, &[PbMode::Subscribe]).await
        } else {
            let conn = conns.swap_remove(rng.random_range(0..conns.len()));
            fx.detach("load", &conn, &ch).await
        };
        counts.entry(ch).or_default().push(m[0]);
    }
    counts
}

/// A rule over `rooms:*` wanting every kind, vacated sent at once.
pub fn every_kind() -> RuleSpec {
    RuleSpec {
        channels: Some(vec!["rooms:*".into()]),
        events: Some(vec![
            "channel.occupancy".into(),
            "channel.occupied".into(),
            "channel.vacated".into(),
        ]),
        vacated_delay_ms: Some(0),
        ..RuleSpec::default()
    }
}

async fn replicas(h: &Harness, n: usize) -> (Vec<TestServer>, Vec<Fx>) {
    let mut servers = Vec::new();
    let mut fxs = Vec::new();
    for _ in 0..n {
        let s = h.server().await;
        fxs.push(Fx::new(&s).await);
        servers.push(s);
    }
    (servers, fxs)
}

async fn failing_receiver_loses_nothing_and_keeps_order(h: Harness) {
    let (_servers, fxs) = replicas(&h, 3).await;
    let store = h.store();
    let rx = Receiver::start().await;
    rule_for(store.as_ref(), &fxs[0], &rx, every_kind()).await;
    rx.set(Behaviour::FailFirst(6));
    let counts = random_load(&fxs, 6, 60, 7).await;
    let want: usize = counts.values().map(|c| expected(c).len()).sum();
    rx.wait_for(WAIT, "every event", |d| {
        per_channel(d).values().map(Vec::len).sum::<usize>() >= want
    })
    .await;
    let got = per_channel(&rx.delivered());
    for (ch, c) in &counts {
        assert_eq!(kinds(&got[ch]), expected(c), "channel {ch}");
    }
    let failed = rx.requests().iter().filter(|r| r.status == 500).count();
    assert_eq!(failed, 6, "the first six requests failed and were retried");
    assert!(rx.requests().iter().all(|r| r.valid));
}

async fn a_target_that_never_answers_delays_no_other_rule(h: Harness) {
    let (servers, fxs) = replicas(&h, 3).await;
    let store = h.store();
    let rules = store.integrations().expect("integrations");
    let slow = Receiver::start().await;
    let fast = Receiver::start().await;
    let slow_rule = rule_for(
        store.as_ref(),
        &fxs[0],
        &slow,
        RuleSpec {
            timeout_ms: Some(1_000),
            retention_ms: Some(3_000),
            ..every_kind()
        },
    )
    .await;
    rule_for(store.as_ref(), &fxs[0], &fast, every_kind()).await;
    // the fast rule's worst latency from a change to its delivery, over 20
    // changes: first while the other target answers, then while it hangs
    let worst_of = async |round: &str| {
        let mut worst = Duration::ZERO;
        for i in 0..20 {
            let ch = format!("rooms:{round}{i}");
            let t = Instant::now();
            fxs[i % 3]
                .attach("s", &format!("{round}{i}"), &ch, &[PbMode::Subscribe])
                .await;
            fast.wait_for(WAIT, "the fast rule's event", |d| {
                d.iter().any(|(_, e)| e["channel"] == ch.as_str())
            })
            .await;
            worst = worst.max(t.elapsed());
        }
        worst
    };
    let calm = worst_of("a").await;
    slow.set(Behaviour::Hang);
    let worst = worst_of("n").await;
    println!("fast rule's worst change-to-delivery over 20 changes: {calm:?} beside an answering target, {worst:?} beside a hanging one");
    // the hanging rule's requests each take its whole 1 s timeout; had the
    // fast rule waited behind them, some change would have taken that long
    assert!(worst < Duration::from_millis(1_000), "worst {worst:?}");

    // past its retention, the hanging rule's events are dead letters,
    // read and replayed through the API as an operator would
    let mut api = IntegrationServiceClient::new(servers[1].channel().await);
    let dead = crate::support::eventually(WAIT, "dead letters", || {
        let mut api = api.clone();
        let id = slow_rule.id.clone();
        async move {
            let d = api
                .list_dead_letters(pb::ListDeadLettersRequest {
                    rule_id: id,
                    limit: 1_000,
                })
                .await
                .ok()?
                .into_inner()
                .dead_letters;
            let n: usize = d.iter().map(|l| l.events.len()).sum();
            // the 20 channels' occupied and occupancy events
            (n >= 40).then_some(d)
        }
    })
    .await;
    assert!(dead.iter().all(|l| l.reason == "timed out"), "{:?}", dead[0].reason);
    // until nothing of it is left in flight
    crate::support::eventually(WAIT, "an empty queue", || {
        let rules = rules.clone();
        let id = slow_rule.id.clone();
        async move { (rules.backlog(&id).await.ok()? == 0).then_some(()) }
    })
    .await;
    // replayed once the target answers: every one of them arrives
    slow.set(Behaviour::Ok);
    let queued = api
        .replay_dead_letters(pb::ReplayDeadLettersRequest {
            rule_id: slow_rule.id.clone(),
            batch_ids: Vec::new(),
        })
        .await
        .expect("replay")
        .into_inner()
        .events;
    assert!(queued >= 40);
    slow.wait_for(WAIT, "replayed events", |d| {
        let chans: HashSet<&str> = d
            .iter()
            .filter_map(|(_, e)| e["channel"].as_str())
            .filter(|c| c.starts_with("rooms:n"))
            .collect();
        chans.len() == 20
    })
    .await;
    let left = api
        .list_dead_letters(pb::ListDeadLettersRequest {
            rule_id: slow_rule.id.clone(),
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner()
        .dead_letters;
    assert!(left.is_empty());
}

async fn redis_restarted_deliveries_resume(mut h: Harness) {
    let (_servers, fxs) = replicas(&h, 3).await;
    let store = h.store();
    let rx = Receiver::start().await;
    rule_for(store.as_ref(), &fxs[0], &rx, every_kind()).await;
    fxs[1].attach("s", "c1", "rooms:r1", &[PbMode::Subscribe]).await;
    rx.wait_for(WAIT, "before the restart", |d| {
        d.iter().any(|(_, e)| e["channel"] == "rooms:r1")
    })
    .await;
    h.redis_server_mut().restart();
    // the replicas put the rules back; front ends re-sync their sessions
    // (here: write again until the store answers)
    let fx = fxs[2].clone();
    crate::support::eventually(WAIT, "a write after the restart", || {
        let fx = fx.clone();
        async move {
            fx.w.clone()
                .attach(occupancy::proto::v1::AttachRequest {
                    session_id: "s2".into(),
                    connection_id: "c2".into(),
                    channel: "rooms:r2".into(),
                    modes: vec![PbMode::Subscribe as i32],
                })
                .await
                .ok()
        }
    })
    .await;
    rx.wait_for(WAIT, "an event after the restart", |d| {
        d.iter()
            .any(|(_, e)| e["channel"] == "rooms:r2" && e["type"] == "channel.occupied")
    })
    .await;
    assert!(rx.requests().iter().all(|r| r.valid), "signed with the restored secret");
}

async fn a_client_error_is_final(h: Harness) {
    let (_servers, fxs) = replicas(&h, 3).await;
    let store = h.store();
    let rules = store.integrations().expect("integrations");
    let rx = Receiver::start().await;
    let rule = rule_for(store.as_ref(), &fxs[0], &rx, every_kind()).await;
    rx.set(Behaviour::Status(410));
    fxs[1].attach("s", "c1", "rooms:gone", &[PbMode::Subscribe]).await;
    // occupied and occupancy: one request each, never retried
    let dead = crate::support::eventually(WAIT, "two dead letters", || {
        let rules = rules.clone();
        let id = rule.id.clone();
        async move {
            let d: Vec<_> = rules
                .dead_letters(&id, 100)
                .await
                .ok()?
                .into_iter()
                .filter(|l| l.batch.entries.iter().all(|e| e.channel == "rooms:gone"))
                .collect();
            (d.len() >= 2).then_some(d)
        }
    })
    .await;
    assert!(
        dead.iter().all(|d| d.reason == "HTTP 410" && d.attempts == 1),
        "{dead:?}"
    );
    let sent = rx
        .requests()
        .iter()
        .filter(|r| r.body["channel"] == "rooms:gone")
        .count();
    assert_eq!(sent, 2, "a 410 is not retried");
}

mod redis_only {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_restarted_deliveries_resume() {
        super::redis_restarted_deliveries_resume(Harness::redis(TTL)).await;
    }
}

both_stores!(
    failing_receiver_loses_nothing_and_keeps_order,
    a_client_error_is_final,
    a_target_that_never_answers_delays_no_other_rule,
);
