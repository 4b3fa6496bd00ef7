//! The integration store (`IntegrationStore`) on both stores, with the same
//! assertions: rules and their version, enqueue's high-water marks and the
//! entries a change makes, leases, the delivery queue's steps and dead
//! letters. `equivalence` feeds the memory and the Redis store the same
//! random changes and compares their queues, which is what makes the Lua
//! port of `entries_for` trustworthy; `redis_restart` checks that the
//! scripts load again on a Redis that lost them.
use std::sync::Arc;
use std::time::Duration;

use occupancy::domain::{Metrics, Pos};
use occupancy::integrations::limits;
use occupancy::integrations::store::{Enqueued, RuleRef, SourceEvent};
use occupancy::integrations::{DeadLetter, Entry, IntegrationStore, Kind, MemoryIntegrations, Rule, RuleSpec, Staged};
use occupancy::store::redis::keys;
use occupancy::Error;

use crate::support::{Backend, Harness};

mod equivalence;
mod queue;

const TTL: Duration = Duration::from_secs(15);

all_stores!(
    rules_and_their_version,
    rule_limit,
    enqueue_once_per_change,
    enqueue_from_racing_replicas,
    entries_follow_flips_and_categories,
    positions_compare_as_integers,
);

/// A replica's integration store: on Redis a new store with its own
/// connection each time; in memory the shared one.
pub(super) fn ints(h: &Harness) -> Arc<dyn IntegrationStore> {
    h.store().integrations().expect("the store keeps integrations")
}

pub(super) fn rule(events: &[&str], categories: &[&str]) -> Rule {
    Rule::create(
        RuleSpec {
            target: Some("http://127.0.0.1:9/hook".into()),
            events: Some(events.iter().map(|s| s.to_string()).collect()),
            categories: Some(categories.iter().map(|s| s.to_string()).collect()),
            ..RuleSpec::default()
        },
        1,
    )
    .expect("valid rule")
}

pub(super) fn rule_ref(r: &Rule) -> RuleRef {
    RuleRef {
        id: r.id.clone(),
        wants: r.want_bits(),
        categories: r.category_bits(),
    }
}

pub(super) fn metrics(c: u32, publishers: u32, presence_members: u32) -> Metrics {
    Metrics {
        connections: c,
        publishers,
        presence_members,
        ..Metrics::default()
    }
}

pub(super) fn ev(pos: &str, channel: &str, m: Metrics, rules: &[u16]) -> SourceEvent {
    let pos = Pos::parse(pos).expect("position");
    SourceEvent {
        pos,
        channel: channel.into(),
        metrics: m,
        timestamp_ms: 1_700_000_000_000 + pos.ms as i64,
        rules: rules.to_vec(),
    }
}

pub(super) async fn version(s: &dyn IntegrationStore) -> u64 {
    s.rules().await.expect("rules").0
}

pub(super) async fn all(s: &dyn IntegrationStore, rule: &str) -> Vec<Entry> {
    s.read(rule, None, 100_000).await.expect("read")
}

/// The entries without their ids: what two stores must agree on.
pub(super) type Seen = (String, Kind, bool, Metrics, i64);

pub(super) fn seen(entries: &[Entry]) -> Vec<Seen> {
    entries
        .iter()
        .map(|e| (e.channel.clone(), e.kind, e.flip, e.metrics, e.timestamp_ms))
        .collect()
}

pub(super) fn done(n: usize) -> Enqueued {
    Enqueued::Done { entries: n }
}

/// The Redis keys of one rule that exist (none on the memory store).
pub(super) fn rule_keys(h: &Harness, rule: &str) -> Vec<String> {
    let Backend::Redis(r) = &h.backend else {
        return Vec::new();
    };
    let p = h.redis_config().expect("redis").key_prefix;
    let mut c = r.connection();
    [
        keys::int_queue(&p, rule),
        keys::int_staged(&p, rule),
        keys::int_dead(&p, rule),
        keys::int_lease(&p, rule),
    ]
    .into_iter()
    .filter(|k| ::redis::cmd("EXISTS").arg(k).query::<i64>(&mut c).expect("EXISTS") == 1)
    .collect()
}
pub(super) fn letter(batch: &str, entries: Vec<Entry>) -> DeadLetter {
    DeadLetter {
        batch: Staged {
            id: batch.into(),
            entries,
        },
        reason: "HTTP 500".into(),
        attempts: 3,
        dead_ms: 1_700_000_000_123,
    }
}
async fn rules_and_their_version(h: Harness) {
    let s = ints(&h);
    assert_eq!(s.rules().await.unwrap(), (0, Vec::new()));
    let a = rule(&["channel.occupancy"], &[]);
    let b = rule(&["channel.occupied", "channel.vacated"], &["presenceMembers"]);
    s.put_rule(&a, true).await.unwrap();
    s.put_rule(&b, true).await.unwrap();
    let mut want = vec![a.clone(), b.clone()];
    want.sort_by(|x, y| x.id.cmp(&y.id));
    // another replica sees the same
    assert_eq!(ints(&h).rules().await.unwrap(), (2, want));

    let mut a2 = a.clone();
    a2.description = "changed".into();
    s.put_rule(&a2, false).await.unwrap();
    let (v, rules) = s.rules().await.unwrap();
    assert_eq!(v, 3);
    assert!(rules.contains(&a2) && !rules.contains(&a));

    let ghost = rule(&["channel.occupancy"], &[]);
    let err = s.put_rule(&ghost, false).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    assert_eq!(version(&*s).await, 3, "a refused put changes nothing");

    // give rule a a queue, a stage, a dead letter and a lease
    let r = [rule_ref(&a2)];
    let got = s
        .enqueue(
            3,
            0,
            &r,
            &[
                ev("1-0", "x", metrics(1, 0, 0), &[0]),
                ev("1-1", "x", metrics(2, 0, 0), &[0]),
                ev("1-2", "x", metrics(3, 0, 0), &[0]),
            ],
        )
        .await
        .unwrap();
    assert_eq!(got, done(3));
    let q = all(&*s, &a.id).await;
    let staged = Staged {
        id: "batch-1".into(),
        entries: q[..1].to_vec(),
    };
    s.stage(&a.id, &staged).await.unwrap();
    s.stage(
        &a.id,
        &Staged {
            id: "batch-2".into(),
            entries: q[1..2].to_vec(),
        },
    )
    .await
    .unwrap();
    s.kill(&a.id, &letter("batch-2", q[1..2].to_vec())).await.unwrap();
    assert!(s.lease(&a.id, "w1", Duration::from_secs(60)).await.unwrap());
    if matches!(h.backend, Backend::Redis(_)) {
        assert_eq!(
            rule_keys(&h, &a.id).len(),
            4,
            "queue, staged, dead letters and lease exist"
        );
    }

    assert!(s.delete_rule(&a.id).await.unwrap());
    assert_eq!(version(&*s).await, 4);
    assert_eq!(s.backlog(&a.id).await.unwrap(), 0);
    assert!(all(&*s, &a.id).await.is_empty());
    assert!(s.staged(&a.id).await.unwrap().is_empty());
    assert!(s.dead_letters(&a.id, 10).await.unwrap().is_empty());
    assert!(
        s.lease(&a.id, "w2", Duration::from_secs(60)).await.unwrap(),
        "the lease went too"
    );
    s.release(&a.id, "w2").await.unwrap();
    // a worker that did not notice the deletion leaves nothing behind
    s.stage(&a.id, &staged).await.unwrap();
    s.kill(&a.id, &letter("batch-1", staged.entries.clone())).await.unwrap();
    assert!(s.staged(&a.id).await.unwrap().is_empty());
    assert!(s.dead_letters(&a.id, 10).await.unwrap().is_empty());
    assert_eq!(rule_keys(&h, &a.id), Vec::<String>::new());

    assert!(!s.delete_rule(&a.id).await.unwrap(), "already gone");
    assert_eq!(version(&*s).await, 5, "every delete bumps the version");
    assert_eq!(s.rules().await.unwrap().1, vec![b]);
}

async fn rule_limit(h: Harness) {
    let s = ints(&h);
    let mut made = Vec::new();
    for _ in 0..limits::MAX_RULES {
        let r = rule(&["channel.occupancy"], &[]);
        s.put_rule(&r, true).await.unwrap();
        made.push(r);
    }
    let err = s.put_rule(&rule(&["channel.occupancy"], &[]), true).await.unwrap_err();
    assert!(matches!(err, Error::ResourceExhausted(_)), "{err:?}");
    let (v, rules) = s.rules().await.unwrap();
    assert_eq!((v, rules.len()), (limits::MAX_RULES as u64, limits::MAX_RULES));
    // replacing needs no room
    let mut changed = made[0].clone();
    changed.paused = true;
    s.put_rule(&changed, false).await.unwrap();
    assert!(s.delete_rule(&made[1].id).await.unwrap());
    s.put_rule(&rule(&["channel.occupancy"], &[]), true).await.unwrap();
    assert_eq!(s.rules().await.unwrap().1.len(), limits::MAX_RULES);
}
async fn enqueue_once_per_change(h: Harness) {
    let (s, other) = (ints(&h), ints(&h));
    let a = rule(&["channel.occupancy"], &[]);
    s.put_rule(&a, true).await.unwrap();
    let r = [rule_ref(&a)];
    let events = [
        ev("5-0", "x", metrics(1, 0, 0), &[0]),
        ev("5-1", "y", metrics(1, 0, 0), &[0]),
        ev("6-0", "x", metrics(2, 0, 0), &[0]),
    ];
    assert_eq!(s.enqueue(0, 0, &r, &events).await.unwrap(), Enqueued::Stale);
    assert_eq!(s.enqueue(2, 0, &r, &events).await.unwrap(), Enqueued::Stale);
    assert_eq!(s.backlog(&a.id).await.unwrap(), 0, "a stale call does nothing");
    assert_eq!(s.enqueue(1, 0, &r, &events).await.unwrap(), done(3));
    // a second replica with the same changes adds nothing
    assert_eq!(other.enqueue(1, 0, &r, &events).await.unwrap(), done(0));
    assert_eq!(other.enqueue(1, 0, &r, &events[1..]).await.unwrap(), done(0));
    // overlapping: only the new one counts
    let more = [events[2].clone(), ev("6-1", "y", metrics(2, 0, 0), &[0])];
    assert_eq!(other.enqueue(1, 0, &r, &more).await.unwrap(), done(1));
    // another shard has its own mark
    assert_eq!(
        s.enqueue(1, 1, &r, &[ev("1-0", "z", metrics(1, 0, 0), &[0])])
            .await
            .unwrap(),
        done(1)
    );
    let q = all(&*s, &a.id).await;
    let channels: Vec<&str> = q.iter().map(|e| e.channel.as_str()).collect();
    assert_eq!(channels, ["x", "y", "x", "y", "z"]);
    assert_eq!(q[2].metrics.connections, 2);
    assert_eq!(q[0].timestamp_ms, 1_700_000_000_005);
    assert!(q.windows(2).all(|w| w[0].pos() < w[1].pos()), "ids increase: {q:?}");
    assert_eq!(s.backlog(&a.id).await.unwrap(), 5);
    // a rule covering nothing of a change: no entry, but the metrics are
    // remembered (the next change of x is no flip)
    assert_eq!(
        s.enqueue(1, 0, &r, &[ev("7-0", "w", metrics(1, 0, 0), &[])])
            .await
            .unwrap(),
        done(0)
    );
    assert_eq!(
        s.enqueue(1, 0, &r, &[ev("7-1", "w", metrics(2, 0, 0), &[0])])
            .await
            .unwrap(),
        done(1)
    );
    assert!(!all(&*s, &a.id).await.last().unwrap().flip);
}

async fn enqueue_from_racing_replicas(h: Harness) {
    let s = ints(&h);
    let a = rule(&["channel.occupancy", "channel.occupied", "channel.vacated"], &[]);
    s.put_rule(&a, true).await.unwrap();
    let r = vec![rule_ref(&a)];
    let events: Vec<SourceEvent> = (0..40)
        .map(|i| {
            let ch = ["a", "b", "c"][i % 3];
            ev(
                &format!("{}-{}", 10 + i / 4, i % 4),
                ch,
                metrics((i % 5) as u32 / 2, 0, 0),
                &[0],
            )
        })
        .collect();
    // every replica hands every change over in order, in calls of its own
    // sizes; the calls interleave however they will
    let replica = |sizes: Vec<usize>| {
        let (s, r, events) = (ints(&h), r.clone(), events.clone());
        tokio::spawn(async move {
            let mut from = 0;
            let mut n = 0;
            for size in sizes.into_iter().cycle() {
                if from >= events.len() {
                    break;
                }
                let to = (from + size).min(events.len());
                match s.enqueue(1, 3, &r, &events[from..to]).await.unwrap() {
                    Enqueued::Done { entries } => n += entries,
                    Enqueued::Stale => panic!("stale"),
                }
                from = to;
                tokio::task::yield_now().await;
            }
            n
        })
    };
    let tasks = [
        replica(vec![1]),
        replica(vec![3, 5]),
        replica(vec![7]),
        replica(vec![2, 11]),
    ];
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    // what one call of everything makes, on a fresh store
    let fresh = MemoryIntegrations::new();
    fresh.put_rule(&a, true).await.unwrap();
    assert!(matches!(
        fresh.enqueue(1, 3, &r, &events).await.unwrap(),
        Enqueued::Done { .. }
    ));
    let want = seen(&all(&fresh, &a.id).await);
    let got = seen(&all(&*s, &a.id).await);
    assert_eq!(got, want);
    assert_eq!(total, want.len(), "each entry appended once");
}

async fn entries_follow_flips_and_categories(h: Harness) {
    let s = ints(&h);
    let every = rule(&["channel.occupancy", "channel.occupied", "channel.vacated"], &[]);
    let members = rule(&["channel.occupancy"], &["presenceMembers"]);
    // a vacated rule with a delay also sees occupied events (to cancel)
    let vacated = rule(&["channel.vacated"], &[]);
    let mut vacated_now = rule(&["channel.vacated"], &[]);
    vacated_now.vacated_delay_ms = 0;
    for r in [&every, &members, &vacated, &vacated_now] {
        s.put_rule(r, true).await.unwrap();
    }
    let refs: Vec<RuleRef> = [&every, &members, &vacated, &vacated_now]
        .into_iter()
        .map(rule_ref)
        .collect();
    let on = [0, 1, 2, 3];
    let events = [
        ev("1-0", "x", metrics(1, 0, 0), &on),
        ev("1-1", "x", metrics(2, 1, 0), &on),
        ev("1-2", "x", metrics(2, 1, 1), &on),
        ev("2-0", "x", metrics(0, 0, 0), &on),
        // a channel that was never seen starts from zero
        ev("2-1", "y", metrics(0, 0, 0), &on),
    ];
    assert_eq!(s.enqueue(4, 0, &refs, &events).await.unwrap(), done(13));
    let kinds = |entries: Vec<Entry>| -> Vec<(Kind, bool, u32)> {
        entries
            .into_iter()
            .map(|e| (e.kind, e.flip, e.metrics.connections))
            .collect()
    };
    use Kind::{Occupancy as O, Occupied as Up, Vacated as Down};
    assert_eq!(
        kinds(all(&*s, &every.id).await),
        [
            (Up, true, 1),
            (O, true, 1),
            (O, false, 2),
            (O, false, 2),
            (O, true, 0),
            (Down, true, 0),
            // no category filter: every change, even one that changes nothing
            (O, false, 0),
        ]
    );
    assert_eq!(
        kinds(all(&*s, &members.id).await),
        [(O, true, 1), (O, false, 2), (O, true, 0)]
    );
    assert_eq!(kinds(all(&*s, &vacated.id).await), [(Up, true, 1), (Down, true, 0)]);
    assert_eq!(kinds(all(&*s, &vacated_now.id).await), [(Down, true, 0)]);
    // the metrics of the last change are what the next one compares with
    let again = [ev("3-0", "x", metrics(1, 0, 0), &on)];
    assert_eq!(s.enqueue(4, 0, &refs, &again).await.unwrap(), done(4));
}

async fn positions_compare_as_integers(h: Harness) {
    let s = ints(&h);
    let a = rule(&["channel.occupancy"], &[]);
    s.put_rule(&a, true).await.unwrap();
    let r = [rule_ref(&a)];
    let call = |pos: &str| {
        let s = s.clone();
        let r = r.clone();
        let e = ev(pos, "x", metrics(1, 0, 0), &[0]);
        async move { s.enqueue(1, 0, &r, &[e]).await.unwrap() }
    };
    // a longer number is larger, whatever its digits
    assert_eq!(call("9-0").await, done(1));
    assert_eq!(call("10-0").await, done(1));
    assert_eq!(call("9-99").await, done(0));
    // sequence numbers past 2^53, where doubles are no longer exact
    assert_eq!(call("10-9007199254740993").await, done(1));
    assert_eq!(call("10-9007199254740992").await, done(0));
    assert_eq!(call("10-9007199254740993").await, done(0));
    assert_eq!(call("10-9007199254740994").await, done(1));
    assert_eq!(call("18446744073709551615-18446744073709551614").await, done(1));
    assert_eq!(call("18446744073709551615-18446744073709551615").await, done(1));
    assert_eq!(call("18446744073709551615-18446744073709551615").await, done(0));
    assert_eq!(s.backlog(&a.id).await.unwrap(), 6);
}
