//! Redis only: a subscriber's stream across a Redis restart, and event
//! readers that read the log only while their replica has subscribers.

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
