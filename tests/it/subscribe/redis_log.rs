//! Redis only: a subscriber's stream across a Redis restart, and event
//! readers that read the log only while their replica has subscribers (on
//! one Redis, and each partition's reader on a cluster).

use std::collections::HashMap;
use std::time::Duration;

use occupancy::proto::v1 as pb;
use pb::Mode;

use super::TTL;
use crate::fixture::Fx;
use crate::support::sub::{m, req, subscribe};
use crate::support::{eventually, Harness};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_stream_resyncs_without_reconnecting() {
    let mut h = Harness::redis(TTL);
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    fx.attach("fe", "c1", "x", &[Mode::Publish]).await;
    fx.attach("fe", "c1", "y", &[]).await;
    let mut sub = subscribe(&s, req(&["x", "y"])).await.unwrap();
    sub.next().await;
    sub.next().await;
    let redis = h.redis_server_mut();
    redis.restart();
    // the restarted Redis is empty: both channels read back as zero
    let mut latest: HashMap<String, [u32; 9]> = HashMap::new();
    sub.until(|e| {
        latest.insert(e.channel.clone(), m(e));
        latest.get("x") == Some(&[0; 9]) && latest.get("y") == Some(&[0; 9])
    })
    .await;
    // and live events flow again on the same stream
    eventually(Duration::from_secs(10), "writes to work again", || async {
        fx.w.clone()
            .attach(pb::AttachRequest {
                session_id: "fe".into(),
                connection_id: "c9".into(),
                channel: "x".into(),
                modes: vec![Mode::Subscribe as i32],
            })
            .await
            .ok()
    })
    .await;
    sub.until(|e| e.channel == "x" && m(e) == [1, 0, 1, 0, 0, 0, 0, 0, 0])
        .await;
}

/// Blocked clients on the harness's Redis (the event readers' XREADs).
fn blocked_clients(h: &Harness) -> u64 {
    let redis = h.redis_server();
    let info: String = ::redis::cmd("INFO")
        .arg("clients")
        .query(&mut redis.connection())
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("blocked_clients in INFO")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_reads_the_log_only_while_it_has_subscriptions() {
    let h = Harness::redis(TTL);
    let a = h.server().await;
    let b = h.server().await;
    let shards = a.hub.shards() as usize;
    let (fa, fb) = (Fx::new(&a).await, Fx::new(&b).await);
    let wait = Duration::from_secs(10);
    eventually(wait, "both replicas to stop reading", || async {
        (a.hub.paused_shards() == shards && b.hub.paused_shards() == shards && blocked_clients(&h) == 0).then_some(())
    })
    .await;
    // b follows "x"; a, with no subscription, reads nothing of the log
    let mut on_b = subscribe(&b, req(&["x"])).await.unwrap();
    assert_eq!(m(&on_b.next().await), [0; 9]);
    assert_eq!(b.hub.paused_shards(), 0, "a subscription wakes every shard");
    eventually(wait, "b's readers, and only b's, to block on the log", || async {
        (blocked_clients(&h) == shards as u64).then_some(())
    })
    .await;
    let published = a.hub.published();
    fa.attach("fe", "c1", "x", &[]).await;
    assert_eq!(m(&on_b.next().await)[0], 1, "the change is in the log");
    assert_eq!(a.hub.published(), published, "a did not read it");
    assert_eq!(a.hub.paused_shards(), shards);
    // subscribing on a, again and again around writes, misses nothing:
    // each round's snapshot is current and the next change arrives
    for round in 1..=8u32 {
        let ch = format!("r{round}");
        fb.attach("fe", "c1", &ch, &[]).await;
        let mut sub = subscribe(&a, req(&[&ch])).await.unwrap();
        let first = sub.next().await;
        assert_eq!(m(&first)[0], 1, "round {round}: snapshot after the write");
        fb.attach("fe", "c2", &ch, &[]).await;
        let e = sub.next().await;
        assert_eq!(
            (e.channel.as_str(), m(&e)[0]),
            (ch.as_str(), 2),
            "round {round}: live change"
        );
        drop(sub);
        eventually(wait, "a to stop reading again", || async {
            (a.hub.registrations() == 0 && a.hub.paused_shards() == shards).then_some(())
        })
        .await;
    }
    drop(on_b);
    eventually(wait, "b to stop reading", || async {
        (b.hub.paused_shards() == shards && blocked_clients(&h) == 0).then_some(())
    })
    .await;
}

/// On a cluster each partition's reader follows its own stream (partition
/// `p` is event shard `p`): every one of them pauses while the replica has
/// no subscription, so changes in any partition cost it no read, and all
/// of them wake for a subscription, which then misses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_partitions_reader_pauses_while_its_replica_has_no_subscription() {
    let h = Harness::cluster(TTL);
    let a = h.server().await;
    let shards = a.hub.shards() as usize;
    assert_eq!(shards, h.partitions() as usize, "one event shard a partition");
    assert!(shards > 1, "a partitioned layout");
    let fx = Fx::new(&a).await;
    let wait = Duration::from_secs(10);
    eventually(wait, "every partition's reader to pause", || async {
        (a.hub.paused_shards() == shards).then_some(())
    })
    .await;
    // a change in every partition, none of them read
    let n = h.partitions();
    let mut names: Vec<String> = Vec::new();
    for i in 0..1_000 {
        let name = format!("ch{i}");
        if occupancy::domain::partition::partition_of(&name, n) as usize == names.len() {
            names.push(name);
            if names.len() == shards {
                break;
            }
        }
    }
    assert_eq!(names.len(), shards, "a channel in each partition");
    let published = a.hub.published();
    for ch in &names {
        fx.attach("fe", "c1", ch, &[]).await;
    }
    assert_eq!(a.hub.published(), published, "a paused reader read a change");
    assert_eq!(a.hub.paused_shards(), shards);
    // a subscription wakes them all and gets every partition's changes
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut sub = subscribe(&a, req(&refs)).await.unwrap();
    for _ in &names {
        assert_eq!(m(&sub.next().await)[0], 1, "the snapshot");
    }
    assert_eq!(
        a.hub.paused_shards(),
        0,
        "a subscription wakes every partition's reader"
    );
    for ch in &names {
        fx.attach("fe", "c2", ch, &[]).await;
        let e = sub.next().await;
        assert_eq!((e.channel.as_str(), m(&e)[0]), (ch.as_str(), 2), "a live change");
    }
    drop(sub);
    eventually(wait, "every partition's reader to pause again", || async {
        (a.hub.registrations() == 0 && a.hub.paused_shards() == shards).then_some(())
    })
    .await;
}
