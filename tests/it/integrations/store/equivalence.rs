//! The memory and the Redis store fed the same random changes agree (the
//! check on the Lua port of `entries_for`); and the scripts load again on
//! a Redis that lost them.

use std::time::Duration;

use occupancy::domain::{Metrics, Pos};
use occupancy::integrations::store::{RuleRef, SourceEvent};
use occupancy::integrations::{IntegrationStore, Kind, MemoryIntegrations};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{all, done, ev, ints, letter, metrics, rule, rule_ref, seen, version, TTL};
use crate::support::{eventually, Harness};

/// Random rules, and random changes of a few channels over two shards,
/// handed over in random overlapping calls (some stale), through the
/// memory and the Redis store: same replies, same queues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equivalence() {
    let h = Harness::redis(TTL);
    let redis = ints(&h);
    // one store of each for every seed: each seed its own shards, and
    // the channels' last metrics carried over alike
    let memory = MemoryIntegrations::new();
    for seed in 0..4u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let shards = [seed as u32 * 2, seed as u32 * 2 + 1];
        let kinds = ["channel.occupancy", "channel.occupied", "channel.vacated"];
        let cats = [
            "connections",
            "publishers",
            "presenceMembers",
            "presenceClients",
            "objectSubscribers",
        ];
        let mut rules = Vec::new();
        for _ in 0..5 {
            let events: Vec<&str> = kinds.iter().copied().filter(|_| rng.random_bool(0.6)).collect();
            let events = if events.is_empty() { vec![kinds[0]] } else { events };
            let categories: Vec<&str> = cats.iter().copied().filter(|_| rng.random_bool(0.3)).collect();
            let mut r = rule(&events, &categories);
            if rng.random_bool(0.3) {
                r.vacated_delay_ms = 0;
            }
            memory.put_rule(&r, true).await.unwrap();
            redis.put_rule(&r, true).await.unwrap();
            rules.push(r);
        }
        let (v, _) = memory.rules().await.unwrap();
        assert_eq!(version(&*redis).await, v);
        let refs: Vec<RuleRef> = rules.iter().map(rule_ref).collect();

        // per shard, changes in log order
        let mut logs: Vec<Vec<SourceEvent>> = vec![Vec::new(), Vec::new()];
        let mut ms = [1_000u64, 1_000u64];
        for _ in 0..300 {
            let shard = rng.random_range(0..2usize);
            ms[shard] += rng.random_range(0..3);
            let seq = logs[shard]
                .last()
                .filter(|e| e.pos.ms == ms[shard])
                .map_or(0, |e| e.pos.seq + 1);
            let small = |rng: &mut StdRng| {
                if rng.random_bool(0.5) {
                    0
                } else {
                    rng.random_range(0..4)
                }
            };
            let m = Metrics::from_array(std::array::from_fn(|_| small(&mut rng)));
            // 5 is no rule of the call: both stores skip it
            let covering: Vec<u16> = (0..6).filter(|_| rng.random_bool(0.5)).collect();
            logs[shard].push(SourceEvent {
                pos: Pos { ms: ms[shard], seq },
                channel: format!("{}{}", ["room:", "lobby-"][shard], rng.random_range(0..4)),
                metrics: m,
                timestamp_ms: ms[shard] as i64 * 7,
                rules: covering,
            });
        }
        // calls: a window of the log, starting at most 5 before the end
        // of the previous one
        let mut next = [0usize, 0usize];
        let mut calls = 0;
        while next.iter().zip(&logs).any(|(n, l)| *n < l.len()) {
            let shard = rng.random_range(0..2usize);
            let log = &logs[shard];
            if next[shard] >= log.len() {
                continue;
            }
            let from = next[shard].saturating_sub(rng.random_range(0..6));
            let to = (next[shard] + rng.random_range(1..20)).min(log.len());
            let version = if rng.random_bool(0.05) { v + 1 } else { v };
            let call = &log[from..to];
            let want = memory.enqueue(version, shards[shard], &refs, call).await.unwrap();
            let got = redis.enqueue(version, shards[shard], &refs, call).await.unwrap();
            assert_eq!(got, want, "seed {seed}, call {calls}");
            if version == v {
                next[shard] = to;
            }
            calls += 1;
        }
        let mut total = 0;
        for r in &rules {
            let (want, got) = (all(&memory, &r.id).await, all(&*redis, &r.id).await);
            assert_eq!(seen(&got), seen(&want), "seed {seed}, rule {:?}", r.events);
            assert!(got.windows(2).all(|w| w[0].pos() < w[1].pos()));
            total += got.len();
        }
        assert!(total > 300, "seed {seed}: the changes made entries ({total})");
        for r in &rules {
            assert!(memory.delete_rule(&r.id).await.unwrap());
            assert!(redis.delete_rule(&r.id).await.unwrap());
        }
    }
}

/// A Redis that restarted empty (scripts gone) works again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart() {
    let mut h = Harness::redis(TTL);
    let s = ints(&h);
    let a = rule(&["channel.occupancy"], &[]);
    s.put_rule(&a, true).await.unwrap();
    let r = [rule_ref(&a)];
    assert_eq!(
        s.enqueue(1, 0, &r, &[ev("1-0", "x", metrics(1, 0, 0), &[0])])
            .await
            .unwrap(),
        done(1)
    );

    // the script cache alone flushed
    let mut c = h.redis_server().connection();
    let () = ::redis::cmd("SCRIPT").arg("FLUSH").query(&mut c).unwrap();
    assert_eq!(
        s.enqueue(1, 0, &r, &[ev("2-0", "x", metrics(2, 0, 0), &[0])])
            .await
            .unwrap(),
        done(1)
    );

    h.redis_server_mut().restart();
    // the first calls may find the old connection broken
    eventually(Duration::from_secs(10), "the store to answer again", || {
        let s = s.clone();
        async move { s.rules().await.ok() }
    })
    .await;
    assert_eq!(s.rules().await.unwrap(), (0, Vec::new()), "an empty Redis");
    s.put_rule(&a, true).await.unwrap();
    assert_eq!(
        s.enqueue(1, 0, &r, &[ev("1-0", "x", metrics(1, 0, 0), &[0])])
            .await
            .unwrap(),
        done(1)
    );
    let q = all(&*s, &a.id).await;
    assert_eq!(
        seen(&q),
        [(
            "x".to_string(),
            Kind::Occupancy,
            true,
            metrics(1, 0, 0),
            1_700_000_000_001
        )]
    );
    assert!(s.lease(&a.id, "w1", Duration::from_secs(5)).await.unwrap());
    s.kill(&a.id, &letter("b", q.clone())).await.unwrap();
    assert_eq!(s.replay(&a.id, &[]).await.unwrap(), 1);
}
