//! The local Redis Cluster that cluster tests run on (`support::cluster`),
//! checked for what they rely on: three primaries with a replica each, a
//! function library loaded on every primary through redis-rs's cluster
//! client, keys under partition-style hash tags spread over every primary,
//! a SIGKILLed primary replaced by its replica with the library and the
//! acknowledged data, and live resharding followed by the same client.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

use crate::support::cluster::RedisCluster;

const LIBRARY: &str = "#!lua name=probe\n\
    redis.register_function('probe_incr', function(keys, args) return redis.call('INCR', keys[1]) end)";

/// Keys under 32 partition tags, as a partitioned layout names them.
fn keys() -> Vec<String> {
    (0..32).map(|p| format!("occupancy:{{p:{p}}}:probe")).collect()
}

fn slot(cluster: &RedisCluster, key: &str) -> u16 {
    cluster.keyslot(key)
}

async fn incr(conn: &mut ClusterConnection, key: &str) -> redis::RedisResult<i64> {
    redis::cmd("FCALL")
        .arg("probe_incr")
        .arg(1)
        .arg(key)
        .query_async(conn)
        .await
}

/// Calls until one succeeds (the switch after a kill or during a reshard
/// may fail a few), bounded in count and time.
async fn incr_eventually(conn: &mut ClusterConnection, key: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = None;
    for _ in 0..400 {
        match incr(conn, key).await {
            Ok(v) => return v,
            Err(e) => last = Some(e),
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("FCALL on {key} kept failing: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_cluster_fails_over_and_reshards_under_a_cluster_client() {
    let mut cluster = RedisCluster::start();
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "three primaries: {primaries:?}");
    assert_eq!(cluster.nodes().len(), 6, "each with one replica");

    let client = ClusterClient::builder(cluster.urls())
        .retries(8)
        .connection_timeout(Duration::from_secs(1))
        .response_timeout(Duration::from_secs(2))
        .build()
        .expect("cluster client");
    let mut conn = client.get_async_connection().await.expect("cluster connection");
    // routed to every primary by the client
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(LIBRARY)
        .query_async(&mut conn)
        .await
        .expect("FUNCTION LOAD on every primary");

    let keys = keys();
    let owners: HashSet<u16> = keys
        .iter()
        .map(|k| cluster.primary_of(slot(&cluster, k)).port)
        .collect();
    assert_eq!(owners.len(), 3, "the partition tags spread over every primary");
    for k in &keys {
        assert_eq!(incr(&mut conn, k).await.expect("FCALL"), 1, "{k}");
    }
    // acknowledged by the replicas before the kill
    cluster.wait_replicated();

    // a primary SIGKILLed: its replica takes its slots, with the library
    let victim = cluster.primary_of(slot(&cluster, &keys[0]));
    cluster.kill(victim.port);
    let started = Instant::now();
    for k in &keys {
        assert_eq!(incr_eventually(&mut conn, k).await, 2, "{k} after the failover");
    }
    cluster.wait_ok();
    let after = cluster.primaries();
    assert_eq!(after.len(), 3, "a replica promoted: {after:?}");
    assert!(after.iter().all(|p| p.port != victim.port));
    assert!(started.elapsed() < Duration::from_secs(30));

    // live resharding: slots holding keys move, the client follows
    let before: Vec<u16> = keys
        .iter()
        .map(|k| cluster.primary_of(slot(&cluster, k)).port)
        .collect();
    let (from, to) = (after[0].clone(), after[1].clone());
    // `redis-cli --cluster reshard` takes the source's lowest slots first:
    // enough of them to reach the lowest one holding a key
    let lowest = keys
        .iter()
        .map(|k| slot(&cluster, k))
        .filter(|s| from.slots.iter().any(|(a, b)| (*a..=*b).contains(s)))
        .min()
        .expect("the source holds a key");
    let moving: u16 = from
        .slots
        .iter()
        .filter(|(a, _)| *a <= lowest)
        .map(|(a, b)| (*b).min(lowest) - a + 1)
        .sum();
    cluster.reshard(&from, &to, moving);
    cluster.wait_ok();
    let moved: Vec<usize> = keys
        .iter()
        .enumerate()
        .filter(|(i, k)| before[*i] == from.port && cluster.primary_of(slot(&cluster, k)).port == to.port)
        .map(|(i, _)| i)
        .collect();
    assert!(!moved.is_empty(), "some keys' slots moved");
    for k in &keys {
        assert_eq!(incr_eventually(&mut conn, k).await, 3, "{k} after the reshard");
    }
}
