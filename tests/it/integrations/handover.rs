//! Replicas SIGKILLed: the one holding a rule's deliveries, mid-batch
//! (another replica takes the rule over when the lease runs out and
//! delivers the rest, staged batches first under their own
//! `webhook-id`s), and the one enqueuing a shard's changes (another takes
//! the shard and offers the changes it kept: none is lost).

use std::time::Duration;

use occupancy::store::{RedisConfig, RedisStore, Store};

use super::faults::{every_kind, expected, per_channel, random_load};
use super::{kinds, rule_for};
use crate::fixture::Fx;
use crate::support::process::Proc;
use crate::support::receiver::{Behaviour, Receiver};
use crate::support::RedisServer;

/// Three replica processes on a private Redis, a receiver, and a rule
/// over `rooms:*` for every kind, flowing.
async fn three_replicas() -> (RedisServer, Vec<Proc>, Vec<Fx>, Receiver) {
    let redis = RedisServer::start();
    // sessions outlive the test: an expiry would change the counts
    let procs = Proc::replicas(3, &redis.url(), &["--session-ttl", "10m"]);
    let mut fxs = Vec::new();
    for p in &procs {
        fxs.push(Fx::connect(&p.url()).await);
    }
    // the replicas' key prefix is the default one
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(RedisStore::new(RedisConfig::new(redis.url())).unwrap());
    let rx = Receiver::start().await;
    rule_for(store.as_ref(), &fxs[0], &rx, every_kind()).await;
    // every replica's source follows changes (within its rules poll of the
    // first rule): from then on any of them may die
    for p in &procs {
        crate::support::eventually(Duration::from_secs(10), "every source following changes", || async {
            p.logged("integration source: following changes").then_some(())
        })
        .await;
    }
    (redis, procs, fxs, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_holder_hands_its_batches_over() {
    let (_redis, procs, fxs, rx) = three_replicas().await;
    let holder = procs
        .iter()
        .position(|p| p.logged("holding rule"))
        .expect("a replica holds the rule");
    // every request takes a while, so the holder dies with batches in flight
    rx.set(Behaviour::Delay(200));
    let others: Vec<Fx> = (0..3).filter(|i| *i != holder).map(|i| fxs[i].clone()).collect();
    let counts = random_load(&others, 5, 40, 11).await;
    let before = rx.requests().len();
    crate::support::eventually(Duration::from_secs(10), "requests in flight", || {
        let n = rx.requests().len();
        async move { (n > before).then_some(()) }
    })
    .await;
    procs[holder].signal("KILL");
    let want: usize = counts.values().map(|c| expected(c).len()).sum();
    rx.wait_for(Duration::from_secs(60), "every event after the handover", |d| {
        per_channel(d).values().map(Vec::len).sum::<usize>() >= want
    })
    .await;
    let got = per_channel(&rx.delivered());
    for (ch, c) in &counts {
        assert_eq!(kinds(&got[ch]), expected(c), "channel {ch}");
    }
    let took_over = (0..3).filter(|i| *i != holder).any(|i| procs[i].logged("holding rule"));
    assert!(took_over, "another replica took the rule over");
    assert!(rx.requests().iter().all(|r| r.valid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_source_owner_loses_no_change() {
    let (redis, procs, fxs, rx) = three_replicas().await;
    // the replica enqueuing shard 0, by the holder name its lease holds
    let holder: String = {
        let mut c = redis.connection();
        redis::cmd("GET")
            .arg("occupancy:int:lease:source:0")
            .query(&mut c)
            .expect("shard 0 has an owner")
    };
    let owner = procs
        .iter()
        .position(|p| p.logged(&holder))
        .expect("a replica logged the holder name");
    procs[owner].signal("KILL");
    // changes on every shard while nobody enqueues shard 0 until its
    // lease runs out and another replica offers what it kept
    let others: Vec<Fx> = (0..3).filter(|i| *i != owner).map(|i| fxs[i].clone()).collect();
    let counts = random_load(&others, 16, 60, 23).await;
    let want: usize = counts.values().map(|c| expected(c).len()).sum();
    rx.wait_for(Duration::from_secs(60), "every event after the shard takeover", |d| {
        per_channel(d).values().map(Vec::len).sum::<usize>() >= want
    })
    .await;
    let got = per_channel(&rx.delivered());
    for (ch, c) in &counts {
        assert_eq!(kinds(&got[ch]), expected(c), "channel {ch}");
    }
    let took_over = (0..3)
        .filter(|i| *i != owner)
        .any(|i| procs[i].logged("enqueuing shard"));
    assert!(took_over, "another replica took the shards over");
}
