//! Redis-specific behaviour: failing fast when Redis is unreachable,
//! health following Redis, and the key layout agreeing with `keys.rs`.

use std::time::{Duration, Instant};

use occupancy::proto::v1 as pb;
use occupancy::store::redis::keys;
use occupancy::store::{RedisConfig, RedisStore};
use pb::Mode;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::fixture::Fx;
use crate::support::{eventually, Harness, TestServer};

pub(crate) async fn health(s: &TestServer, service: &str) -> i32 {
    HealthClient::new(s.channel().await)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status
}

fn config_for(url: String) -> occupancy::Config {
    let mut r = RedisConfig::new(url);
    r.timeout = Duration::from_millis(300);
    let mut c = occupancy::Config::redis(r);
    c.health_interval = Duration::from_millis(100);
    c
}

/// A GetOccupancy answers UNAVAILABLE in well under 2 s (timeout 300 ms).
async fn get_fails_fast(fx: &Fx, what: &str) {
    let started = Instant::now();
    let r =
        fx.r.clone()
            .get_occupancy(pb::GetOccupancyRequest { channel: "x".into() })
            .await;
    assert_unavailable_within_2s(r, started, what);
}

/// Asserts a call started at `started` failed with UNAVAILABLE in well
/// under 2 s.
fn assert_unavailable_within_2s<T: std::fmt::Debug>(r: Result<T, tonic::Status>, started: Instant, what: &str) {
    let e = r.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{what}: {e:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{what}: took {:?}",
        started.elapsed()
    );
}

/// A listener that accepts connections and never answers: a hung Redis.
async fn black_hole() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        // bounded: a test makes a handful of connections
        for _ in 0..1_000 {
            match l.accept().await {
                Ok((s, _)) => held.push(s),
                Err(_) => return,
            }
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_fails_fast_with_unavailable() {
    let (hung, _guard) = black_hole().await;
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    for addr in [hung, refused] {
        let cfg = config_for(format!("redis://{addr}/"));
        let store = occupancy::server::build_store(&cfg).unwrap();
        let s = TestServer::start(cfg, store).await;
        let fx = Fx::new(&s).await;
        for _ in 0..3 {
            get_fails_fast(&fx, &addr.to_string()).await;
            let started = Instant::now();
            let r =
                fx.w.clone()
                    .attach(pb::AttachRequest {
                        session_id: "s".into(),
                        connection_id: "c".into(),
                        channel: "x".into(),
                        modes: vec![],
                    })
                    .await;
            assert_unavailable_within_2s(r, started, &addr.to_string());
        }
        assert_eq!(health(&s, "").await, ServingStatus::NotServing as i32);
        assert_eq!(
            health(&s, "occupancy.v1.OccupancyService").await,
            ServingStatus::NotServing as i32
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_redis_and_calls_recover() {
    let mut h = Harness::redis(Duration::from_secs(15));
    let cfg = match &h.backend {
        crate::support::Backend::Redis(r) => config_for(r.url()),
        _ => unreachable!(),
    };
    let store = occupancy::server::build_store(&cfg).unwrap();
    let s = TestServer::start(cfg, store).await;
    let fx = Fx::new(&s).await;
    assert_eq!(health(&s, "").await, ServingStatus::Serving as i32);
    fx.attach("fe", "c1", "x", &[]).await;
    let redis = h.redis_server_mut();
    redis.kill();
    eventually(Duration::from_secs(10), "NOT_SERVING", || async {
        (health(&s, "").await == ServingStatus::NotServing as i32).then_some(())
    })
    .await;
    // meanwhile calls fail fast, never hanging past the timeout (300 ms)
    for _ in 0..5 {
        get_fails_fast(&fx, "stopped redis").await;
    }
    redis.restart();
    eventually(Duration::from_secs(10), "SERVING again", || async {
        (health(&s, "").await == ServingStatus::Serving as i32).then_some(())
    })
    .await;
    // the restarted Redis is empty, and the server works on it
    assert_eq!(fx.get("x").await, [0; 9]);
    fx.attach("fe", "c1", "x", &[]).await;
    assert_eq!(fx.get("x").await[0], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_and_keys_rs_agree_on_the_layout() {
    let h = Harness::redis(Duration::from_secs(15));
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    let channels = ["plain", "ünïcødé 😀", "with{braces}", "a:b:c"];
    for ch in channels {
        fx.attach("fe", "conn-1", ch, &[Mode::Presence, Mode::Publish]).await;
        fx.enter("fe", "conn-1", ch, "alice").await;
    }
    let redis = h.redis_server();
    let mut c = redis.connection();
    let cfg = h.redis_config().unwrap();
    let p = cfg.key_prefix.as_str();
    for ch in channels {
        // c pub sub pc pm ps op os pcl
        // nine unsigned 32-bit little-endian counters
        let m: Vec<u8> = ::redis::cmd("GET")
            .arg(keys::channel_metrics(p, ch))
            .query(&mut c)
            .unwrap();
        let want: Vec<u8> = [1u32, 1, 0, 1, 1, 0, 0, 0, 1]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(m, want, "{ch}");
        let cl: i64 = ::redis::cmd("HGET")
            .arg(keys::channel_clients(p, ch))
            .arg("alice")
            .query(&mut c)
            .unwrap();
        assert_eq!(cl, 1);
        let shard = keys::shard_of(ch, cfg.event_shards);
        type Entry = (String, Vec<(String, Vec<u8>)>);
        let entries: Vec<Entry> = ::redis::cmd("XRANGE")
            .arg(keys::events(p, shard))
            .arg("-")
            .arg("+")
            .query(&mut c)
            .unwrap();
        assert!(
            entries
                .iter()
                .any(|(_, f)| f.iter().any(|(k, v)| k == ch && *v == want)),
            "{ch}: no event in shard {shard}"
        );
    }
    let names: Vec<String> = ::redis::cmd("ZRANGE")
        .arg(keys::name_index(p))
        .arg(0)
        .arg(-1)
        .query(&mut c)
        .unwrap();
    let mut want: Vec<String> = channels.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(names, want);
    let busy: usize = ::redis::cmd("ZCARD").arg(keys::busy_index(p)).query(&mut c).unwrap();
    assert_eq!(busy, channels.len());
    let token: String = ::redis::cmd("GET").arg(keys::session(p, "fe")).query(&mut c).unwrap();
    let owned: Vec<String> = ::redis::cmd("SMEMBERS")
        .arg(keys::token_connections(p, &token))
        .query(&mut c)
        .unwrap();
    assert_eq!(owned, ["conn-1"]);
    let record: String = ::redis::cmd("HGET")
        .arg(keys::connections(p))
        .arg("conn-1")
        .query(&mut c)
        .unwrap();
    assert!(record.starts_with(&format!("{token}\t4\n")), "{record:?}");
    for ch in channels {
        assert!(record.contains(&format!("\n{ch}\t5\talice")), "{ch}: {record:?}");
    }
    let deadline: Option<f64> = ::redis::cmd("ZSCORE")
        .arg(keys::leases(p))
        .arg(&token)
        .query(&mut c)
        .unwrap();
    assert!(deadline.is_some());
    // a store refuses a prefix that would break hash tags
    let mut bad = RedisConfig::new(redis.url());
    bad.key_prefix = "x{y".into();
    assert!(RedisStore::new(bad).is_err());
}

/// The Lua code is a Redis function library, loaded on first use: after a
/// `FUNCTION FLUSH` (or a Redis that lost it) the next calls load it again
/// and go through, writes and reads alike; the library holds one function
/// per Lua file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_function_library_is_reloaded_when_redis_loses_it() {
    let h = Harness::redis(Duration::from_secs(15));
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    fx.attach("fe", "c1", "lib", &[Mode::Subscribe]).await;
    let redis = h.redis_server();
    let mut c = redis.connection();
    let libraries =
        |c: &mut ::redis::Connection| -> Vec<::redis::Value> { ::redis::cmd("FUNCTION").arg("LIST").query(c).unwrap() };
    let listed = libraries(&mut c);
    assert_eq!(listed.len(), 1, "one library: {listed:?}");
    let text = format!("{listed:?}");
    assert!(text.contains("occupancy_"), "{text}");
    assert_eq!(text.matches("_apply\"").count(), 1, "{text}");
    assert_eq!(text.matches("_apply_many\"").count(), 1, "{text}");
    let _: () = ::redis::cmd("FUNCTION").arg("FLUSH").query(&mut c).unwrap();
    assert!(libraries(&mut c).is_empty());
    // a write, a keep-alive and a list page each need the library back
    assert_eq!(fx.attach("fe", "c2", "lib", &[Mode::Subscribe]).await[0], 2);
    assert_eq!(fx.keep_alive("fe", 0).await.status, pb::SessionStatus::Active as i32);
    assert_eq!(fx.list_all("li", 10).await, ["lib"]);
    assert_eq!(libraries(&mut c).len(), 1);
}

/// A harness on a fresh Redis of its own, and a connection to that Redis.
fn fresh_redis() -> (Harness, ::redis::Connection) {
    let h = Harness::redis(Duration::from_secs(15));
    let redis = h.redis_server();
    let c = redis.connection();
    (h, c)
}

/// Redis' count of calls of one command, from INFO commandstats.
fn command_calls(c: &mut ::redis::Connection, name: &str) -> u64 {
    let info: String = ::redis::cmd("INFO").arg("commandstats").query(c).unwrap();
    let prefix = format!("cmdstat_{name}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_find_the_library_missing_load_it_once() {
    use occupancy::domain::list::{ListOrder, ListQuery};
    use occupancy::domain::SessionId;
    let (h, mut c) = fresh_redis();
    // a store that never ran a health check: its first calls find no
    // library in this fresh Redis, all at once
    let store = h.store();
    let query = ListQuery::new(String::new(), 10, "", ListOrder::Name, false).unwrap();
    let calls = (0..24).map(|i| {
        let store = store.clone();
        let query = query.clone();
        async move {
            if i % 2 == 0 {
                store.list(&query).await.map(|_| ())
            } else {
                let session = SessionId::parse("session_id", format!("s{i}")).unwrap();
                store.keep_alive(&session, None).await.map(|_| ())
            }
        }
    });
    for r in futures::future::join_all(calls).await {
        r.expect("every call succeeds once the library is loaded");
    }
    assert_eq!(
        command_calls(&mut c, "function|load"),
        1,
        "one FUNCTION LOAD for all of them"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_check_loads_the_library() {
    let (h, mut c) = fresh_redis();
    let libraries = |c: &mut ::redis::Connection| -> usize {
        let listed: Vec<::redis::Value> = ::redis::cmd("FUNCTION").arg("LIST").query(c).unwrap();
        listed.len()
    };
    let store = h.store();
    assert_eq!(libraries(&mut c), 0);
    store.ping().await.unwrap();
    assert_eq!(libraries(&mut c), 1, "loaded by the first check");
    store.ping().await.unwrap();
    assert_eq!(
        command_calls(&mut c, "function|load"),
        1,
        "not loaded again while Redis has it"
    );
    let _: () = ::redis::cmd("FUNCTION").arg("FLUSH").query(&mut c).unwrap();
    store.ping().await.unwrap();
    assert_eq!(libraries(&mut c), 1, "back after Redis lost it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_function_commands_is_healthy_once_an_administrator_loaded_the_library() {
    let (h, mut c) = fresh_redis();
    let _: () = ::redis::cmd("ACL")
        .arg("SETUSER")
        .arg("limited")
        .arg("on")
        .arg("nopass")
        .arg("~*")
        .arg("+@all")
        .arg("-function")
        .query(&mut c)
        .unwrap();
    // the administrator's part: a store of the default user loads it
    h.store().ping().await.unwrap();
    let mut cfg = h.redis_config().unwrap();
    cfg.url = cfg.url.replacen("redis://", "redis://limited:any@", 1);
    let limited = RedisStore::new(cfg).unwrap();
    occupancy::store::Store::ping(&limited)
        .await
        .expect("healthy without FUNCTION rights");
    let page = occupancy::store::Store::list(
        &limited,
        &occupancy::domain::list::ListQuery::new(
            String::new(),
            10,
            "",
            occupancy::domain::list::ListOrder::Name,
            false,
        )
        .unwrap(),
    )
    .await
    .expect("and its calls work");
    assert!(page.channels.is_empty(), "{page:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_different_event_shard_counts_are_not_both_healthy() {
    use occupancy::store::Store;
    let (h, mut c) = fresh_redis();
    let with_shards = |n: u32| {
        let mut cfg = h.redis_config().unwrap();
        cfg.event_shards = n;
        RedisStore::new(cfg).unwrap()
    };
    let (eight, also_eight, four) = (with_shards(8), with_shards(8), with_shards(4));
    eight.ping().await.expect("the first replica records its count");
    also_eight.ping().await.expect("a replica with the same count");
    let e = four.ping().await.expect_err("a replica with another count");
    let text = e.to_string();
    assert!(
        text.contains("--event-shards") && text.contains('8') && text.contains('4'),
        "{text}"
    );
    // and its calls are refused for the same reason
    let refused = four.stats().await.expect_err("a call of a replica with another count");
    assert_eq!(refused.to_string(), text);
    also_eight
        .stats()
        .await
        .expect("a replica with the recorded count serves");
    // the record expires unless a matching replica keeps it
    let key = keys::event_shards(&h.redis_config().unwrap().key_prefix);
    let ttl: i64 = ::redis::cmd("PTTL").arg(&key).query(&mut c).unwrap();
    assert!(
        ttl > 0 && ttl <= occupancy::store::redis::EVENT_SHARDS_RECORD.as_millis() as i64,
        "{ttl}"
    );
    // once the old replicas are gone and their record expired, the new
    // count takes over
    let _: () = ::redis::cmd("DEL").arg(&key).query(&mut c).unwrap();
    four.ping().await.expect("the new count is recorded");
    assert!(eight.ping().await.is_err(), "and an old replica is refused in turn");
}

/// A write extends its session's lease to the lease's full length, except
/// when that would move the deadline by less than a tenth of the length or
/// `LEASE_EXTEND_SLACK`, whichever is less: a session writing all the time
/// then rewrites its deadline about once per slack, not with every call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_extends_its_lease_unless_the_deadline_would_barely_move() {
    use occupancy::domain::limits::LEASE_EXTEND_SLACK;
    use occupancy::domain::{ChannelName, ConnectionId, ModeSet, Operation, SessionId};

    // a 15 s lease: the slack is LEASE_EXTEND_SLACK (1 s), below 1.5 s
    let h = Harness::redis(Duration::from_secs(15));
    let store = h.store();
    let mut c = h.redis_server().connection();
    let p = h.redis_config().expect("redis").key_prefix;
    let s = SessionId::parse("s", "fe").expect("id");
    let attach = |i: u32| {
        vec![Operation::Attach {
            connection: ConnectionId::parse("c", format!("c{i}")).expect("id"),
            channel: ChannelName::parse("ch", "room").expect("name"),
            modes: ModeSet::EMPTY,
        }]
    };
    let deadline = |c: &mut ::redis::Connection| -> f64 {
        let token: String = ::redis::cmd("GET").arg(keys::session(&p, "fe")).query(c).expect("GET");
        let d: Option<f64> = ::redis::cmd("ZSCORE")
            .arg(keys::leases(&p))
            .arg(&token)
            .query(c)
            .expect("ZSCORE");
        d.expect("a live lease")
    };
    let started = Instant::now();
    store.apply(&s, &attach(0), false).await.expect("apply");
    let opened = deadline(&mut c);
    store.apply(&s, &attach(1), false).await.expect("apply");
    let after = deadline(&mut c);
    if started.elapsed() < LEASE_EXTEND_SLACK {
        assert_eq!(
            after, opened,
            "a write right after the lease opened leaves its deadline"
        );
    } else {
        // (a host so slow that the second write came a slack later)
        assert!(after > opened, "{after} after {opened}");
    }
    // the deadline set back by twice the slack, as if that much time had
    // passed: the next write extends the lease in full again
    let token: String = ::redis::cmd("GET")
        .arg(keys::session(&p, "fe"))
        .query(&mut c)
        .expect("GET");
    let back = opened - 2.0 * LEASE_EXTEND_SLACK.as_millis() as f64;
    let _: i64 = ::redis::cmd("ZADD")
        .arg(keys::leases(&p))
        .arg(back)
        .arg(&token)
        .query(&mut c)
        .expect("ZADD");
    store.apply(&s, &attach(2), false).await.expect("apply");
    let extended = deadline(&mut c);
    assert!(
        extended >= opened,
        "extended to its full length again: {extended} from {back}"
    );
    // and the lease is the same one throughout
    let still: String = ::redis::cmd("GET")
        .arg(keys::session(&p, "fe"))
        .query(&mut c)
        .expect("GET");
    assert_eq!(still, token);
}

/// A replica whose partition count disagrees with the one recorded in
/// Redis reports NOT_SERVING and refuses every call (FAILED_PRECONDITION,
/// naming both counts) rather than acknowledging writes where no other
/// replica reads them; the replicas with the recorded count go on, and
/// their state holds none of the refused writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_another_partition_count_refuses_every_call() {
    use occupancy::domain::{ChannelName, ConnectionId, ModeSet, Operation, SessionId};
    use occupancy::error::Error;

    let (h, _c) = fresh_redis();
    let with_partitions = |n: u32| {
        let mut cfg = h.redis_config().unwrap();
        cfg.partitions = n;
        occupancy::store::redis::open(cfg).unwrap()
    };
    let (three, two) = (with_partitions(3), with_partitions(2));
    three.ping().await.expect("the first replica records its count");
    let s = SessionId::parse("s", "fe").expect("id");
    let room = ChannelName::parse("ch", "room").expect("name");
    let attach = |conn: &str| {
        vec![Operation::Attach {
            connection: ConnectionId::parse("c", conn).expect("id"),
            channel: room.clone(),
            modes: ModeSet::EMPTY,
        }]
    };
    let refused = |r: occupancy::error::Result<()>, what: &str| match r {
        Err(Error::FailedPrecondition(m)) => assert!(m.contains("--partitions 3") && m.contains('2'), "{what}: {m}"),
        other => panic!("{what}: {other:?}"),
    };
    let e = two.ping().await.expect_err("a replica with another count");
    refused(Err(e), "health");
    refused(two.apply(&s, &attach("c1"), false).await.map(drop), "apply");
    refused(two.get(std::slice::from_ref(&room)).await.map(drop), "get");
    refused(two.stats().await.map(drop), "stats");
    refused(two.keep_alive(&s, None).await.map(drop), "keep_alive");
    refused(two.close_session(&s).await.map(drop), "close_session");
    // the replica with the recorded count is not affected
    three.apply(&s, &attach("c2"), false).await.expect("apply");
    let totals = three.stats().await.expect("stats");
    assert_eq!((totals.connections, totals.sessions), (1, 1), "{totals:?}");
}
