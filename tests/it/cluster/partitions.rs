//! The state split into partitions on the local Redis Cluster: where
//! each partition's keys live, and the writes of the partitions one
//! primary holds sharing that node's calls (`apply_many`).

use std::collections::HashSet;
use std::time::Duration;

/// A connection of its own to the node on `port`.
fn node(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .expect("client")
        .get_connection_with_timeout(Duration::from_secs(2))
        .expect("connect")
}

/// The full name of the library's function ending in `suffix` on a node.
fn library_function(node: &mut redis::Connection, suffix: &str) -> String {
    let listed: Vec<redis::Value> = redis::cmd("FUNCTION").arg("LIST").query(node).expect("list");
    let text = format!("{listed:?}");
    text.split(['\'', '"'])
        .find(|w| w.starts_with("occupancy_") && w.ends_with(suffix))
        .unwrap_or_else(|| panic!("no {suffix} in {text}"))
        .to_string()
}

/// The arguments of an `apply` call (a section of `apply_many`) under
/// `prefix`: `session` attaches `conn` to `channel`, as the store encodes
/// it (codec::apply_args).
fn attach_args(prefix: &str, session: &str, conn: &str, channel: &str) -> Vec<String> {
    [
        prefix, "1", "1000", "30000", "1", session, "0", "0", "0", "4242", "", "1", "A", conn, channel, "0", "0",
    ]
    .map(String::from)
    .to_vec()
}

/// The state split into partitions on a cluster: every key the service
/// wrote (writes across partitions, presence, a closed session, lists,
/// the reaper) is under one partition's tag, in that partition's slot, on
/// the primary serving it, or is the partition count's record; and the
/// partitions spread over the three primaries, as their tags are chosen
/// to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_keys_each_live_in_their_partitions_slot() {
    use occupancy::domain::{ChannelName, ConnectionId, ListOrder, ListQuery, ModeSet, Operation, SessionId};

    let h = crate::support::Harness::cluster(Duration::from_secs(30));
    let cluster = h.redis_cluster();
    let store = h.store();
    store.ping().await.expect("ping");
    let s = SessionId::parse("s", "fe").expect("id");
    let ops: Vec<Operation> = (0..30)
        .map(|i| Operation::Attach {
            connection: ConnectionId::parse("c", format!("c{}", i % 4)).expect("id"),
            channel: ChannelName::parse("ch", format!("room:{i}")).expect("name"),
            modes: ModeSet::EMPTY,
        })
        .collect();
    store.apply(&s, &ops, true).await.expect("apply");
    let q = ListQuery::new(String::new(), 100, "", ListOrder::ConnectionsDesc, true).expect("query");
    assert_eq!(store.list(&q).await.expect("list").channels.len(), 30);
    store.reap().await.expect("reap");
    let kept = SessionId::parse("s", "kept").expect("id");
    store.apply(&kept, &ops[..5], false).await.expect("apply");
    assert!(store.close_session(&s).await.expect("close").is_some());

    let record = occupancy::store::redis::keys::partitions("test");
    let n = h.partitions();
    let tags: Vec<String> = (0..n)
        .map(|p| occupancy::store::redis::keys::partition_tag(p, n))
        .collect();
    let slots: Vec<u16> = tags.iter().map(|t| cluster.keyslot(&format!("{{{t}}}"))).collect();
    let mut used = HashSet::new();
    for primary in cluster.primaries() {
        let mut node = node(primary.port);
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut node).expect("KEYS");
        for k in keys.iter().filter(|k| **k != record) {
            let p = (0..n)
                .find(|p| k.starts_with(&format!("test:{{{}}}:", tags[*p as usize])))
                .unwrap_or_else(|| panic!("{k} is under no partition's tag"));
            assert_eq!(cluster.keyslot(k), slots[p as usize], "{k}");
            assert_eq!(
                cluster.primary_of(slots[p as usize]).id,
                primary.id,
                "{k} on its slot's primary"
            );
            used.insert(primary.id.clone());
        }
    }
    let distinct: HashSet<String> = slots.iter().map(|s| cluster.primary_of(*s).id).collect();
    assert_eq!(used, distinct, "every partition's primary holds state");
    assert_eq!(distinct.len(), 3, "the partitions spread over the three primaries");
}

/// Writes of the partitions one primary holds share that node's calls
/// (`apply_many`), and a call runs only the partitions whose state is on
/// the node it reached. Called directly on partition A's primary with a
/// section for A and one for a partition B of another primary, it applies
/// A's write and answers B's as absent, writing nothing of B (the store
/// then sends B's writes on their own, counted in `partitions_elsewhere`).
/// Through the store, once it has read where the partitions are, a batch
/// spanning every partition finds each where it was sent, and every count
/// is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_partitions_share_its_calls_and_a_partition_elsewhere_is_left_untouched() {
    use occupancy::domain::{ChannelName, ConnectionId, ModeSet, OpStatus, Operation, SessionId};
    use occupancy::store::redis::keys;

    let h = crate::support::Harness::cluster(Duration::from_secs(30));
    let cluster = h.redis_cluster();
    let store = h.store();
    // the health check loads the library and creates each partition's
    // anchor key (a section runs where its anchor is)
    store.ping().await.expect("ping");

    let n = h.partitions();
    let prefix = |p: u32| format!("test:{{{}}}", keys::partition_tag(p, n));
    let node_of = |p: u32| cluster.primary_of(keys::prefix_slot(&prefix(p)));
    let a = 0;
    let b = (1..n)
        .find(|&p| node_of(p).id != node_of(a).id)
        .expect("a partition on another primary");
    let mut node = node(node_of(a).port);
    let function = library_function(&mut node, "_apply_many");
    let section = |p: u32, channel: &str| attach_args(&prefix(p), "lua-session", "lua-conn", channel);
    let mut call = redis::cmd("FCALL");
    call.arg(&function).arg(1).arg(format!("{}:anchor", prefix(a))).arg("1");
    // a channel of each partition, as the router places channels
    let channel_in = |p: u32| {
        (0..)
            .map(|k| format!("lua-{k}"))
            .find(|c| occupancy::domain::partition::partition_of(c, n) == p)
            .expect("an unbounded search over names ends")
    };
    let (channel_a, channel_b) = (channel_in(a), channel_in(b));
    for (p, channel) in [(a, &channel_a), (b, &channel_b)] {
        let args = section(p, channel);
        call.arg(args.len()).arg(args);
    }
    let answered: Vec<redis::Value> = call.query(&mut node).expect("apply_many");
    assert_eq!(answered.len(), 2, "{answered:?}");
    assert!(
        matches!(&answered[0], redis::Value::Array(v) if v.len() == 2),
        "{answered:?}"
    );
    assert_eq!(answered[1], redis::Value::Nil, "B is not on this node: {answered:?}");
    let on = |channel: &str| ChannelName::parse("ch", channel).expect("name");
    let got = store.get(&[on(&channel_a), on(&channel_b)]).await.expect("get");
    assert_eq!((got[0].connections, got[1].connections), (1, 0));

    // through a new store, which has not read where the partitions are,
    // under continuous load from four writers: it learns the placement and
    // moves each partition's writes to its node's queue while writes of it
    // are always in flight (a partition moves once none waits in the old
    // queue), after which no call finds a partition elsewhere
    let store = h.store();
    store.ping().await.expect("ping");
    let elsewhere = || occupancy::telemetry::store().partitions_elsewhere_total();
    let batch = |round: u32| -> Vec<Operation> {
        (0..120)
            .map(|i| Operation::Attach {
                connection: ConnectionId::parse("c", format!("r{round}c{}", i / 60)).expect("id"),
                channel: ChannelName::parse("ch", format!("room:{}", i % 60)).expect("name"),
                modes: ModeSet::EMPTY,
            })
            .collect()
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (store, stop, next) = (store.clone(), stop.clone(), next.clone());
            tokio::spawn(async move {
                let mut done = 0u32;
                // bounded: at most 2,000 batches per writer
                for _ in 0..2_000 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let round = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let s = SessionId::parse("s", format!("r{round}")).expect("id");
                    let (results, _) = store.apply(&s, &batch(round), false).await.expect("apply");
                    assert!(results.iter().all(|r| r.status == OpStatus::Ok), "{results:?}");
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut settled = false;
    for _ in 0..40 {
        let before = (elsewhere(), next.load(std::sync::atomic::Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(250)).await;
        let after = (elsewhere(), next.load(std::sync::atomic::Ordering::Relaxed));
        if after.0 == before.0 && after.1 > before.1 {
            settled = true;
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut rounds = 0;
    for w in writers {
        rounds += w.await.expect("writer");
    }
    assert!(settled, "under load, calls kept finding partitions elsewhere");
    let channels: Vec<ChannelName> = (0..60).map(|i| on(&format!("room:{i}"))).collect();
    let got = store.get(&channels).await.expect("get");
    assert!(
        got.iter().all(|m| m.connections == 2 * rounds),
        "every channel holds two connections of each of the {rounds} batches: {:?}",
        got.iter().map(|m| m.connections).collect::<Vec<_>>()
    );
}

/// While a partition's slot is migrating away from its primary (between
/// `CLUSTER SETSLOT … MIGRATING` and the `MIGRATE` of its keys), a write
/// that would create a key there would stop halfway: Redis redirects a
/// missing key of a migrating slot, and a script is not undone. Every call
/// checks the slot first: called directly, `apply` answers TRYAGAIN and
/// `apply_many` answers the section as absent, both changing nothing.
/// Through the store, a write sent meanwhile is refused, sent again, and
/// goes through once the slot is stable again, and every count is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_while_its_partitions_slot_migrates_changes_nothing_and_goes_through_after() {
    use occupancy::domain::{ChannelName, ConnectionId, ModeSet, Operation, SessionId};
    use occupancy::store::redis::keys;

    let h = crate::support::Harness::cluster(Duration::from_secs(30));
    let cluster = h.redis_cluster();
    let store = h.store();
    store.ping().await.expect("ping");
    let n = h.partitions();
    let p = 0;
    let prefix = format!("test:{{{}}}", keys::partition_tag(p, n));
    let slot = keys::prefix_slot(&prefix);
    let src = cluster.primary_of(slot);
    let dst = cluster
        .primaries()
        .into_iter()
        .find(|x| x.id != src.id)
        .expect("another primary");
    let (mut on_src, mut on_dst) = (node(src.port), node(dst.port));
    let channels: Vec<String> = (0..)
        .map(|k| format!("mig-{k}"))
        .filter(|c| occupancy::domain::partition::partition_of(c, n) == p)
        .take(2)
        .collect();
    let on = |channel: &str| ChannelName::parse("ch", channel).expect("name");
    let attach = |conn: &str, channel: &str| Operation::Attach {
        connection: ConnectionId::parse("c", conn).expect("id"),
        channel: on(channel),
        modes: ModeSet::EMPTY,
    };
    let s = SessionId::parse("s", "fe").expect("id");
    store
        .apply(&s, &[attach("c0", &channels[0])], false)
        .await
        .expect("apply");

    let setslot = |c: &mut redis::Connection, state: &str, node: Option<&str>| {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SETSLOT").arg(slot).arg(state);
        if let Some(node) = node {
            cmd.arg(node);
        }
        let _: () = cmd.query(c).unwrap_or_else(|e| panic!("SETSLOT {state}: {e}"));
    };
    setslot(&mut on_dst, "IMPORTING", Some(&src.id));
    setslot(&mut on_src, "MIGRATING", Some(&dst.id));

    // an attach of a new connection to a new channel: it would create
    // keys in the slot
    let args = attach_args(&prefix, "mig-session", "mig-conn", &channels[1]);
    let anchor = keys::anchor(&prefix);
    let direct: redis::RedisResult<redis::Value> = redis::cmd("FCALL")
        .arg(library_function(&mut on_src, "_apply"))
        .arg(1)
        .arg(&anchor)
        .arg(&args)
        .query(&mut on_src);
    let e = direct.expect_err("apply while the slot migrates");
    assert_eq!(e.code(), Some("TRYAGAIN"), "{e}");
    let many: Vec<redis::Value> = redis::cmd("FCALL")
        .arg(library_function(&mut on_src, "_apply_many"))
        .arg(1)
        .arg(&anchor)
        .arg("1")
        .arg(args.len())
        .arg(&args)
        .query(&mut on_src)
        .expect("apply_many");
    assert_eq!(many, [redis::Value::Nil], "the section is answered as absent");
    // (a missing key of the migrating slot is redirected: KEYS lists the
    // node's keys without a redirect, and the connection records' hash
    // exists)
    let all: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut on_src).expect("KEYS");
    let made: Vec<&String> = all
        .iter()
        .filter(|k| k.contains("mig-session") || k.contains(channels[1].as_str()))
        .collect();
    let record: Option<String> = redis::cmd("HGET")
        .arg(keys::connections(&prefix))
        .arg("mig-conn")
        .query(&mut on_src)
        .expect("HGET");
    assert!(
        made.is_empty() && record.is_none(),
        "nothing of the write was applied: {made:?} {record:?}"
    );

    // through the store: a write sent while the slot migrates is refused
    // (Redis counts the TRYAGAIN), sent again by the store, and goes
    // through once the slot is stable again, without an error
    let refused = |c: &mut redis::Connection| -> u64 {
        let info: String = redis::cmd("INFO").arg("errorstats").query(c).expect("INFO");
        info.lines()
            .find_map(|l| l.strip_prefix("errorstat_TRYAGAIN:count="))
            .map_or(0, |n| n.trim().parse().expect("a count"))
    };
    let before = refused(&mut on_src);
    let writer = {
        let (store, s, ops) = (store.clone(), s.clone(), vec![attach("c1", &channels[1])]);
        tokio::spawn(async move { store.apply(&s, &ops, false).await })
    };
    let mut seen = false;
    // bounded: 1,000 reads of the count, 2 ms apart
    for _ in 0..1_000 {
        if refused(&mut on_src) > before {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(seen, "the write reached the migrating slot and was refused");
    setslot(&mut on_src, "STABLE", None);
    setslot(&mut on_dst, "STABLE", None);
    let applied = writer.await.expect("writer");
    assert!(
        applied.is_ok(),
        "the write went through after the refusals: {applied:?}"
    );
    let got = store.get(&[on(&channels[0]), on(&channels[1])]).await.expect("get");
    assert_eq!((got[0].connections, got[1].connections), (1, 1));
}
