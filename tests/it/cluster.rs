//! Redis Cluster: the local cluster that cluster tests run on
//! (`support::cluster`) checked for what they rely on (three primaries with
//! a replica each, a function library loaded on every primary through
//! redis-rs's cluster client, keys under partition-style hash tags spread
//! over every primary, a SIGKILLed primary replaced by its replica with the
//! library and the acknowledged data, live resharding followed by the same
//! client); the service in cluster mode keeping every key in one slot; and
//! the service under the model writers' load through a primary SIGKILLed
//! and through a live reshard of its slot. The conformance, subscription
//! and epoch suites run on a cluster too (`all_stores!`). The service's
//! partitions on the cluster are checked in `cluster/partitions.rs`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::cluster::RedisCluster;

mod partitions;

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

/// The service's whole state under one hash tag, on the cluster primary
/// serving the tag's slot: writes with presence, reads, pages in both
/// orders, totals, the reaper, a closed session and webhook deliveries fed
/// from the event streams all work, and every key lands in that slot (a
/// cluster node refuses a call touching any other). Without the tag, the
/// same node refuses a write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_under_one_hash_tag_runs_on_one_cluster_primary() {
    use occupancy::config::Config;
    use occupancy::domain::{ChannelName, ListOrder, ListQuery, Operation, SessionId};
    use occupancy::integrations::RuleSpec;
    use occupancy::proto::v1::Mode as PbMode;
    use occupancy::store::{RedisConfig, RedisStore, Store};
    use std::sync::Arc;

    use crate::fixture::Fx;
    use crate::support::receiver::Receiver;

    let cluster = RedisCluster::start();
    let tag = occupancy::store::redis::CLUSTER_HASH_TAG;
    let tag_slot = cluster.keyslot(&format!("{{{tag}}}"));
    let owner = cluster.primary_of(tag_slot);
    let url = format!("redis://127.0.0.1:{}/", owner.port);
    // cluster mode, seeded with one other node: the client finds the owner
    let seed = cluster
        .primaries()
        .into_iter()
        .find(|p| p.id != owner.id)
        .expect("another primary");
    let mut rc = RedisConfig::new(format!(" redis://127.0.0.1:{}/ ,", seed.port));
    rc.cluster = true;
    rc.replica_acks = 1;
    let store: Arc<dyn Store> = Arc::new(RedisStore::new(rc.clone()).expect("store"));
    let mut config = Config::redis(rc);
    config.reap_interval = Duration::from_millis(50);
    config.health_interval = Duration::from_millis(100);
    let server = crate::support::TestServer::start(config, store.clone()).await;
    let fx = Fx::new(&server).await;
    let rx = Receiver::start().await;
    super::integrations::rule_for(
        store.as_ref(),
        &fx,
        &rx,
        RuleSpec {
            channels: Some(vec!["rooms:*".into()]),
            events: Some(vec!["channel.occupancy".into(), "channel.vacated".into()]),
            vacated_delay_ms: Some(0),
            ..RuleSpec::default()
        },
    )
    .await;

    for i in 0..21 {
        let (conn, channel) = (format!("c{i}"), format!("rooms:{}", i % 7));
        fx.attach("s1", &conn, &channel, &[PbMode::Subscribe, PbMode::Presence])
            .await;
        fx.enter("s1", &conn, &channel, "alice").await;
    }
    let ch = ChannelName::parse("channel", "rooms:3").expect("name");
    let m = store.get(&[ch]).await.expect("get")[0];
    assert_eq!((m.connections, m.presence_members, m.presence_clients), (3, 3, 1));
    for order in [ListOrder::Name, ListOrder::ConnectionsDesc] {
        let q = ListQuery::new("rooms:".into(), 100, "", order, true).expect("query");
        let page = store.list(&q).await.expect("list");
        // the seven channels and the rule's probe channel
        assert_eq!(page.channels.len(), 8, "{order:?}");
    }
    let totals = store.stats().await.expect("stats");
    assert!(totals.connections >= 21 && totals.presence_members == 21, "{totals:?}");
    let s1 = SessionId::parse("session_id", "s1").expect("id");
    assert_eq!(store.session_state(&s1).await.expect("state").len(), 21);
    store.reap().await.expect("reap");
    assert!(store.close_session(&s1).await.expect("close").is_some());
    rx.wait_for(Duration::from_secs(15), "every channel vacated", |d| {
        (0..7).all(|i| {
            d.iter()
                .any(|(_, e)| e["channel"] == format!("rooms:{i}").as_str() && e["type"] == "channel.vacated")
        })
    })
    .await;

    let keys_on = |port: u16| -> Vec<String> {
        let mut node = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .expect("client")
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect");
        redis::cmd("KEYS").arg("*").query(&mut node).expect("KEYS")
    };
    let keys = keys_on(owner.port);
    assert!(keys.len() >= 10, "state was written: {keys:?}");
    // the partition count's record is the one key outside: a plain SET of
    // the health check, never declared by a function call
    let record = occupancy::store::redis::keys::partitions("occupancy");
    let outside: Vec<&String> = keys
        .iter()
        .filter(|k| cluster.keyslot(k) != tag_slot && **k != record)
        .collect();
    assert!(outside.is_empty(), "keys outside the tag's slot: {outside:?}");
    for other in cluster.primaries().iter().filter(|p| p.id != owner.id) {
        let keys: Vec<String> = keys_on(other.port).into_iter().filter(|k| *k != record).collect();
        assert_eq!(keys, Vec::<String>::new(), "no key on another primary");
    }

    // the layout without a tag spans slots: the node refuses the write
    let untagged = RedisStore::new(RedisConfig::new(url)).expect("store");
    let op = Operation::Attach {
        connection: occupancy::domain::ConnectionId::parse("connection_id", "c1").expect("id"),
        channel: ChannelName::parse("channel", "rooms:1").expect("name"),
        modes: Default::default(),
    };
    let refused = untagged.apply(&s1, &[op], false).await;
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("do not hash to the same slot")),
        "{refused:?}"
    );
}

/// What the readers beside the model writers saw: calls made, those
/// answered UNAVAILABLE, and every other failure.
#[derive(Debug, Default)]
struct ReadReport {
    calls: usize,
    unavailable: usize,
    faults: Vec<String>,
}

/// Reads on every replica, round robin, until `stop` turns true (at most
/// 100,000 rounds): GetStats (a transaction per partition), GetOccupancy
/// and a ListChannels page, each of which may fail during a fault only as
/// UNAVAILABLE.
async fn start_readers(
    servers: &[crate::support::TestServer],
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<ReadReport> {
    use occupancy::proto::v1 as pb;
    let clients = futures::future::join_all(servers.iter().map(crate::support::TestServer::read)).await;
    tokio::spawn(async move {
        let mut report = ReadReport::default();
        let mut note = |what: &str, r: Result<(), tonic::Status>| {
            report.calls += 1;
            match r {
                Ok(()) => {}
                Err(s) if s.code() == tonic::Code::Unavailable => report.unavailable += 1,
                Err(s) => report.faults.push(format!("{what}: {:?} {}", s.code(), s.message())),
            }
        };
        for round in 0..100_000usize {
            if *stop.borrow() {
                break;
            }
            let mut c = clients[round % clients.len()].clone();
            let r = c.get_stats(pb::GetStatsRequest {}).await.map(drop);
            note("GetStats", r);
            let r = c
                .get_occupancy(pb::GetOccupancyRequest {
                    channel: format!("ch:{}", round % 10),
                })
                .await
                .map(drop);
            note("GetOccupancy", r);
            let r = c
                .list_channels(pb::ListChannelsRequest {
                    prefix: "ch:".into(),
                    limit: 5,
                    ..Default::default()
                })
                .await
                .map(drop);
            note("ListChannels", r);
            // a pause between rounds, or the writers' end
            if tokio::time::timeout(Duration::from_millis(5), stop.changed())
                .await
                .is_ok()
            {
                break;
            }
        }
        report
    })
}

/// Three in-process replicas on a cluster harness, each with a subscriber
/// to the model writers' channels, the model writers started on them, and
/// readers beside them.
struct UnderLoad {
    servers: Vec<crate::support::TestServer>,
    urls: Vec<String>,
    subs: Vec<crate::support::sub::Sub>,
    model: std::sync::Arc<std::sync::Mutex<crate::model::Model>>,
    load: tokio::task::JoinHandle<crate::model_check::Report>,
    stop_readers: tokio::sync::watch::Sender<bool>,
    readers: tokio::task::JoinHandle<ReadReport>,
    drive: crate::model_check::Drive,
    _seed: crate::model_check::SeedGuard,
}

impl UnderLoad {
    async fn start(h: &crate::support::Harness, ops_per_writer: usize) -> Self {
        use crate::model_check::{seed, Drive, SeedGuard};
        use occupancy::proto::v1 as pb;

        let d = Drive {
            seed: seed(),
            writers: 3,
            ops_per_writer,
            channels: 10,
            expiries: false,
        };
        let guard = SeedGuard(d.seed);
        let servers: Vec<crate::support::TestServer> = futures::future::join_all((0..3).map(|_| h.server())).await;
        let urls: Vec<String> = servers.iter().map(crate::support::TestServer::url).collect();
        let mut subs = Vec::new();
        for s in &servers {
            let mut sub = crate::support::sub::subscribe(
                s,
                pb::SubscribeOccupancyRequest {
                    prefix: "ch:".into(),
                    ..Default::default()
                },
            )
            .await
            .expect("subscribe");
            sub.quiet_for(Duration::from_millis(100)).await;
            subs.push(sub);
        }
        let model = std::sync::Arc::new(std::sync::Mutex::new(crate::model::Model::with_partitions(
            h.partitions(),
        )));
        let load = crate::faults::start_load(&urls, &d, &model);
        let (stop_readers, stop) = tokio::sync::watch::channel(false);
        let readers = start_readers(&servers, stop).await;
        // the fault must hit a busy service
        crate::faults::until_loaded(&crate::fixture::Fx::new(&servers[0]).await).await;
        Self {
            servers,
            urls,
            subs,
            model,
            load,
            stop_readers,
            readers,
            drive: d,
            _seed: guard,
        }
    }

    /// Waits for the writers and stops the readers (which must have met
    /// no failure but UNAVAILABLE); then every replica's counts, listing
    /// and totals, and every subscriber's latest events, against the model.
    async fn finish(mut self, what: &str) -> crate::model_check::Report {
        use crate::model_check::{check, check_subscribers, universe};
        let report = self.load.await.expect("writers");
        // (send_replace: the readers may have ended on their round limit)
        self.stop_readers.send_replace(true);
        let reads = self.readers.await.expect("readers");
        eprintln!("{what}: reads {reads:?}");
        assert!(reads.calls > 0, "the readers made no call");
        assert!(
            reads.faults.is_empty(),
            "reads failed other than as UNAVAILABLE: {:?}",
            reads.faults
        );
        let model = self.model.lock().unwrap().clone();
        let mismatches = check(&self.urls, &model, &universe(&self.drive)).await;
        let sub_mismatches = check_subscribers(&mut self.subs, &model).await;
        eprintln!("{what}: {report:?}, mismatches {mismatches}, subscriber mismatches {sub_mismatches}");
        assert_eq!(report.status_mismatches, 0, "operation results disagree with the model");
        assert_eq!(mismatches, 0, "acknowledged writes lost or applied twice");
        assert_eq!(sub_mismatches, 0, "subscribers missed changes");
        for s in &self.servers {
            // every replica serves again without a restart
            crate::support::eventually(Duration::from_secs(10), "SERVING", || async {
                (crate::redis_store::health(s, "").await == ServingStatus::Serving as i32).then_some(())
            })
            .await;
        }
        report
    }
}

/// The slot of partition 0 on a cluster harness.
fn state_slot(cluster: &RedisCluster) -> u16 {
    let tag = occupancy::store::redis::keys::partition_tag(0, crate::support::CLUSTER_PARTITIONS);
    cluster.keyslot(&format!("test:{{{tag}}}:anchor"))
}

/// The primary serving partition 0 is SIGKILLed while three replicas take
/// the model writers' load: its replica is promoted, calls fail meanwhile
/// only as UNAVAILABLE (the writers retry on those and fail the test on
/// anything else), the replicas recover without a restart, and every
/// count, listing, total and subscriber's view equals the model. Every
/// acknowledged write was acknowledged by the replica too
/// (`--redis-replica-acks`), so none is lost in the failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_sigkilled_under_load_fails_over_and_every_count_stays_exact() {
    let mut h = crate::support::Harness::cluster(Duration::from_secs(60));
    let run = UnderLoad::start(&h, 300).await;
    let cluster = h.cluster_mut();
    let slot = state_slot(cluster);
    let victim = cluster.primary_of(slot);
    cluster.kill(victim.port);
    let report = run.finish("primary kill").await;
    assert!(
        report.retries > 0,
        "no call met the failover: the fault was not exercised"
    );
    let now = h.cluster_mut().primary_of(slot);
    assert_ne!(now.port, victim.port, "the replica took over");
}

/// The state's slot moves live to another primary (`redis-cli --cluster
/// reshard`, as the README says) under the model writers' load: the
/// cluster client follows the move, no epoch changes (nothing was lost,
/// so no front end re-syncs), and every count, listing, total and
/// subscriber's view equals the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_resharded_live_under_load_keeps_every_count_exact() {
    let h = crate::support::Harness::cluster(Duration::from_secs(60));
    // enough load to outlast the move
    let run = UnderLoad::start(&h, 900).await;
    let cluster = h.redis_cluster();
    let slot = state_slot(cluster);
    let from = cluster.primary_of(slot);
    let to = cluster
        .primaries()
        .into_iter()
        .find(|p| p.id != from.id)
        .expect("another primary");
    tokio::task::block_in_place(|| cluster.reshard_slot(slot, &to));
    assert!(
        !run.load.is_finished(),
        "the writers were still busy when the slot had moved"
    );
    assert_eq!(cluster.primary_of(slot).id, to.id, "the slot moved");
    let report = run.finish("reshard").await;
    assert_eq!(report.syncs, 0, "a slot move loses nothing: no epoch changed");
}

/// The primary serving partition 0 is drained live with `redis-cli
/// --cluster rebalance` (weight 0: every one of its slots moves to the
/// other primaries, as before taking a node out) under the model writers'
/// load: partition 0's slot moves while they write, nothing is lost (no
/// epoch changes), and every count, listing, total and subscriber's view
/// equals the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_drained_by_rebalance_under_load_keeps_every_count_exact() {
    let h = crate::support::Harness::cluster(Duration::from_secs(60));
    let run = UnderLoad::start(&h, 900).await;
    let cluster = h.redis_cluster();
    let slot = state_slot(cluster);
    let from = cluster.primary_of(slot);
    let busy_when_moved = tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let drain = scope.spawn(|| cluster.drain(&from));
            // when partition 0's slot has moved, were the writers still busy?
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut busy = None;
            while busy.is_none() && Instant::now() < deadline {
                let done = drain.is_finished();
                if cluster.primary_of(slot).id != from.id {
                    busy = Some(!run.load.is_finished());
                } else if done {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            drain.join().expect("rebalance");
            busy
        })
    });
    assert_eq!(
        busy_when_moved,
        Some(true),
        "partition 0's slot moved while the writers were busy"
    );
    assert!(
        cluster.primaries().iter().all(|p| p.id != from.id),
        "the drained primary serves no slot"
    );
    let report = run.finish("rebalance").await;
    assert_eq!(report.syncs, 0, "a slot move loses nothing: no epoch changed");
}
