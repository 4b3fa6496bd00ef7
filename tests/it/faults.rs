//! Fault injection with real processes and a real redis-server: a replica
//! killed mid-load, Redis losing its data (between phases, under a write
//! first, under writers still active), a KeepAlive answer lost to a Redis
//! stall, a front end that stops sending KeepAlive.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use occupancy::proto::v1 as pb;
use pb::Mode;

use crate::epochs::FrontEnd;
use crate::fixture::*;
use crate::model::{self, Model, Op};
use crate::model_check::{check, check_subscribers, drive, seed, universe, Drive, Report, SeedGuard};
use crate::support::process::Proc;
use crate::support::sub::{m, req, Sub};
use crate::support::{connect, wire, Harness, ReadClient, RedisServer};

async fn subscribe_url(url: &str, r: pb::SubscribeOccupancyRequest) -> Sub {
    let stream = ReadClient::new(connect(url).await)
        .subscribe_occupancy(r)
        .await
        .expect("subscribe")
        .into_inner();
    Sub::from_stream(stream)
}

/// A subscriber on `url` to every channel under `ch:` (the model
/// writers' channels), past its empty snapshot.
async fn model_subscriber(url: &str) -> Sub {
    let r = pb::SubscribeOccupancyRequest {
        prefix: "ch:".into(),
        ..Default::default()
    };
    let mut s = subscribe_url(url, r).await;
    s.quiet_for(Duration::from_millis(100)).await;
    s
}

/// Three replica processes over `redis`, and their URLs.
fn three_replicas(redis: &RedisServer) -> (Vec<Proc>, Vec<String>) {
    let replicas = Proc::replicas(3, &redis.url(), &["--session-ttl", "60s"]);
    let urls = replicas.iter().map(Proc::url).collect();
    (replicas, urls)
}

/// Starts the model writers of `d` on `urls`; what they did, once done.
pub(crate) fn start_load(urls: &[String], d: &Drive, model: &Arc<Mutex<Model>>) -> tokio::task::JoinHandle<Report> {
    let (urls, d, model) = (urls.to_vec(), d.clone(), model.clone());
    tokio::spawn(async move { drive(&urls, &d, model).await })
}

/// Waits until the writers have made a few channels (at most 10 s: a
/// fault injected after that still hits a busy service).
pub(crate) async fn until_loaded(fx: &Fx) {
    let started = Instant::now();
    while fx.list_all("", 100).await.len() < 5 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_replica_mid_load_loses_and_doubles_nothing() {
    let d = Drive {
        seed: seed(),
        writers: 3,
        ops_per_writer: 300,
        channels: 10,
        expiries: false,
    };
    let _guard = SeedGuard(d.seed);
    let redis = RedisServer::start();
    let (replicas, urls) = three_replicas(&redis);
    // subscribers on the two replicas that survive
    let mut subs = Vec::new();
    for u in &urls[1..] {
        subs.push(model_subscriber(u).await);
    }
    let model = Arc::new(Mutex::new(Model::default()));
    let load = start_load(&urls, &d, &model);
    // kill replica 0 while the writers are busy (they send to all three)
    let victim = &replicas[0];
    until_loaded(&Fx::connect(&urls[1]).await).await;
    victim.signal("KILL");
    let report = load.await.expect("writers");
    let model = model.lock().unwrap().clone();
    let live = &urls[1..];
    let mismatches = check(live, &model, &universe(&d)).await;
    let sub_mismatches = check_subscribers(&mut subs, &model).await;
    eprintln!("replica kill: {report:?}, mismatches {mismatches}, subscriber mismatches {sub_mismatches}");
    assert!(
        report.retries > 0,
        "no request hit the killed replica: the fault was not exercised"
    );
    assert_eq!(report.status_mismatches, 0);
    assert_eq!(
        report.syncs, 0,
        "a killed replica is no loss of state: no epoch changed"
    );
    assert_eq!(mismatches, 0, "acknowledged writes lost or applied twice");
    assert_eq!(sub_mismatches, 0, "subscribers on the other replicas missed changes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_loses_its_data_one_keepalive_round_and_sync_restore_the_truth() {
    let h = Harness::redis(Duration::from_secs(60));
    loss_then_one_keepalive_round_and_sync(h, |h, channels| {
        let redis = h.redis_server_mut();
        redis.restart();
        channels.iter().map(|c| c.to_string()).collect()
    })
    .await;
}

/// One partition of a cluster loses its data (its slot's keys gone, as a
/// replica promoted before it had the last writes would lack them) while
/// the others keep theirs: its channels read empty, the others' counts
/// stay, and one KeepAlive round (UNKNOWN to every front end, whose lease
/// that partition lost) and SyncSession restore the truth, subscribers
/// following without reconnecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_one_cluster_partition_loses_its_data_one_keepalive_round_and_sync_restore_the_truth() {
    let h = Harness::cluster(Duration::from_secs(60));
    loss_then_one_keepalive_round_and_sync(h, |h, channels| {
        let n = h.partitions();
        let of = |name: &str| occupancy::domain::partition::partition_of(name, n);
        let lost = of("lobby");
        let tag = occupancy::store::redis::keys::partition_tag(lost, n);
        let cluster = h.cluster_mut();
        let slot = cluster.keyslot(&format!("{{{tag}}}"));
        assert!(cluster.drop_slot(slot) > 0, "the partition held keys");
        let gone: Vec<String> = channels
            .iter()
            .filter(|c| of(c) == lost)
            .map(|c| c.to_string())
            .collect();
        assert!(
            gone.len() < channels.len(),
            "some channels are in other partitions: {gone:?}"
        );
        gone
    })
    .await;
}

/// Three front ends' state; then `lose` loses some of it and names the
/// channels that lost their data; one KeepAlive round and SyncSession
/// restore every count, and a subscriber ends on the truth without
/// reconnecting.
async fn loss_then_one_keepalive_round_and_sync(
    mut h: Harness,
    lose: impl FnOnce(&mut Harness, &[&str]) -> Vec<String>,
) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    let mut model = Model::default();
    // three front ends with connections, modes and presence
    for f in 0..3 {
        let session = format!("fe-{f}");
        for c in 0..5 {
            let conn = format!("fe{f}-c{c}");
            for ch in ["lobby", "game", &format!("fe-{f}-private")] {
                let modes = model::PRESENCE | if c % 2 == 0 { model::PUBLISH } else { model::SUBSCRIBE };
                model.apply(&session, &Op::attach(&conn, ch, modes));
                fx.attach(
                    &session,
                    &conn,
                    ch,
                    &[Mode::Presence, if c % 2 == 0 { Mode::Publish } else { Mode::Subscribe }],
                )
                .await;
                let client = format!("user{}", c % 3);
                model.apply(&session, &Op::enter(&conn, ch, &client));
                fx.enter(&session, &conn, ch, &client).await;
            }
        }
    }
    let channels = ["lobby", "game", "fe-0-private", "fe-1-private", "fe-2-private"];
    for ch in channels {
        assert_eq!(fx.get(ch).await, model.metrics(ch));
    }
    let mut sub = crate::support::sub::subscribe(&s, req(&channels)).await.unwrap();
    // what the subscriber holds
    let mut view: std::collections::HashMap<String, [u32; 9]> = std::collections::HashMap::new();
    for _ in 0..channels.len() {
        let e = sub.next().await;
        view.insert(e.channel.clone(), m(&e));
    }
    let lost = lose(&mut h, &channels);
    redis_answers(&fx).await;
    for ch in channels {
        if lost.iter().any(|l| l == ch) {
            assert_eq!(fx.get(ch).await, [0; 9], "{ch}: data lost");
        } else {
            assert_eq!(fx.get(ch).await, model.metrics(ch), "{ch}: data kept");
        }
    }
    // one KeepAlive round: every front end learns its session is unknown
    // and re-sends its whole state
    for f in 0..3 {
        let session = format!("fe-{f}");
        let r = fx.keep_alive(&session, 0).await;
        assert_eq!(r.status, pb::SessionStatus::Unknown as i32);
        let resp =
            fx.w.clone()
                .sync_session(pb::SyncSessionRequest {
                    session_id: session.clone(),
                    attachments: wire::holdings(&model.holdings(&session)),
                    ttl_ms: 0,
                })
                .await
                .unwrap()
                .into_inner();
        assert_eq!(resp.removed, 0);
        assert_eq!(resp.added, 15 + 15, "15 attachments and 15 members");
    }
    for ch in channels {
        assert_eq!(fx.get(ch).await, model.metrics(ch), "{ch} restored");
    }
    // the subscriber ends on the truth without reconnecting: it may have
    // seen the loss (zeros) and the recovery, or nothing at all if the
    // state was restored before its reader noticed
    view.extend(sub.settle(Duration::from_millis(1_500)).await);
    for ch in channels {
        assert_eq!(view.get(ch), Some(&model.metrics(ch)), "{ch} as the subscriber sees it");
    }
}

async fn sync_fixes_divergence(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    // stored: c1 on a (publish), c2 on b with presence alice+bob, c3 on c
    fx.attach("fe", "c1", "a", &[Mode::Publish]).await;
    fx.attach("fe", "c2", "b", &[Mode::Presence]).await;
    fx.enter("fe", "c2", "b", "alice").await;
    fx.enter("fe", "c2", "b", "bob").await;
    fx.attach("fe", "c3", "c", &[]).await;
    // another session holds c4, which the front end says is its own now
    fx.attach("other", "c4", "d", &[Mode::Subscribe]).await;
    fx.attach("other", "c4", "e", &[Mode::Subscribe]).await;
    // the front end's truth: c1 subscribes on a, c2 on b with bob and carol,
    // no c3, c4 on d only
    let truth = vec![
        pb::SessionAttachment {
            connection_id: "c1".into(),
            channel: "a".into(),
            modes: vec![Mode::Subscribe as i32],
            presence_client_ids: vec![],
        },
        pb::SessionAttachment {
            connection_id: "c2".into(),
            channel: "b".into(),
            modes: vec![Mode::Presence as i32],
            presence_client_ids: vec!["carol".into(), "bob".into()],
        },
        pb::SessionAttachment {
            connection_id: "c4".into(),
            channel: "d".into(),
            modes: vec![Mode::Subscribe as i32],
            presence_client_ids: vec![],
        },
    ];
    let sync = |attachments: Vec<pb::SessionAttachment>| {
        let mut w = fx.w.clone();
        async move {
            w.sync_session(pb::SyncSessionRequest {
                session_id: "fe".into(),
                attachments,
                ttl_ms: 0,
            })
            .await
            .map(|r| r.into_inner())
        }
    };
    let r = sync(truth.clone()).await.unwrap();
    assert_eq!(r.status, pb::SessionStatus::Active as i32);
    assert!(r.added >= 2 && r.removed >= 3, "{r:?}");
    assert_eq!(fx.get("a").await, [1, 0, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(fx.get("b").await, [1, 0, 0, 1, 2, 0, 0, 0, 2]);
    assert_eq!(fx.get("c").await, [0; 9]);
    assert_eq!(fx.get("d").await, [1, 0, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(fx.get("e").await, [0; 9], "c4 moved whole, its extra channel removed");
    // idempotent
    let r = sync(truth.clone()).await.unwrap();
    assert_eq!((r.added, r.removed), (0, 0));
    // the other session no longer owns c4
    assert!(fx.close("other").await);
    assert_eq!(fx.get("d").await[0], 1);
    // bad input changes nothing
    let mut bad = truth.clone();
    bad[0].presence_client_ids = vec!["x".into()];
    assert_invalid(sync(bad).await, "attachments[0].presence_client_ids");
    let mut dup = truth.clone();
    dup.push(truth[0].clone());
    assert_invalid(sync(dup).await, "attachments[3].channel");
    let mut bad = truth.clone();
    bad[1].channel = String::new();
    assert_invalid(sync(bad).await, "attachments[1].channel");
    assert_eq!(fx.get("b").await, [1, 0, 0, 1, 2, 0, 0, 0, 2]);
    // syncing nothing removes everything
    let r = sync(vec![]).await.unwrap();
    assert!(r.removed >= 3);
    assert!(fx.list_all("", 10).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_fixes_divergence_memory() {
    sync_fixes_divergence(Harness::memory(Duration::from_secs(60))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_fixes_divergence_redis() {
    sync_fixes_divergence(Harness::redis(Duration::from_secs(60))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_front_end_disappears_within_ttl_plus_one_second() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = Proc::spawn(&["--redis-url", &url, "--session-ttl", "1s"]);
    let b = Proc::spawn(&["--redis-url", &url, "--session-ttl", "1s"]);
    let fa = Fx::connect(&a.url()).await;
    let mut sub = subscribe_url(&b.url(), req(&["room"])).await;
    sub.next().await;
    // a front end attaches 20 connections with presence, then goes silent
    let mut ops = Vec::new();
    for i in 0..20 {
        ops.push(attach_op(&format!("c{i}"), "room", &[Mode::Presence]));
        ops.push(enter_op(&format!("c{i}"), "room", &format!("u{i}")));
    }
    fa.apply("fe", ops).await;
    let silent_since = Instant::now();
    sub.until(|e| m(e)[4] == 20).await;
    // the subscriber on the other replica hears it leave
    let events = sub.until(|e| m(e) == [0; 9]).await;
    let gone_after = silent_since.elapsed();
    eprintln!("silent front end gone after {gone_after:?}");
    assert!(
        gone_after <= Duration::from_secs(2),
        "TTL 1 s + 1 s, took {gone_after:?}"
    );
    assert!(events.iter().all(|e| e.channel == "room"));
    assert_eq!(fa.get("room").await, [0; 9]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_without_restart_is_noticed_by_subscribers() {
    let h = Harness::redis(Duration::from_secs(60));
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    fx.attach("fe", "c1", "x", &[Mode::Publish]).await;
    let mut sub = crate::support::sub::subscribe(&s, req(&["x"])).await.unwrap();
    assert_eq!(m(&sub.next().await)[0], 1);
    // more traffic after the flush must not hide the loss
    let redis = h.redis_server();
    let mut c = redis.connection();
    let _: () = ::redis::cmd("FLUSHALL").query(&mut c).unwrap();
    fx.attach("fe2", "c9", "y", &[]).await;
    let e = sub.next().await;
    assert_eq!(
        (e.channel.as_str(), m(&e)),
        ("x", [0; 9]),
        "the subscriber learns x is gone"
    );
    assert_eq!(fx.keep_alive("fe", 0).await.status, pb::SessionStatus::Unknown as i32);
}

/// Waits until the replica behind `fx` reaches Redis again (and has loaded
/// the function library), with a session of its own.
async fn redis_answers(fx: &Fx) {
    crate::support::eventually(Duration::from_secs(10), "redis to answer", || async {
        fx.w.clone()
            .keep_alive(pb::KeepAliveRequest {
                session_id: "probe".into(),
                ttl_ms: 0,
            })
            .await
            .ok()
    })
    .await;
}

/// A front end holding `c1` on `room` with `alice` entered, then Redis
/// restarted empty under it: the front end, and the epoch it held.
async fn front_end_then_data_loss(h: &mut Harness, fx: &Fx) -> (FrontEnd, u64) {
    let mut fe = FrontEnd::new(fx.clone(), "fe");
    fe.attach("c1", "room", &[Mode::Presence]).await;
    fe.enter("c1", "room", "alice").await;
    let before = fe.epoch;
    h.redis_server_mut().restart();
    redis_answers(fx).await;
    (fe, before)
}

/// Redis restarts empty and the front end's first call is a write (a busy
/// front end writes far more often than it keeps alive). Before, the write
/// opened a fresh lease, the next KeepAlive answered ACTIVE, and the room
/// read 1 connection for good while the front end held 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_first_after_redis_restarted_empty_is_noticed_by_its_epoch() {
    let mut h = Harness::redis(Duration::from_secs(60));
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    let (mut fe, before) = front_end_then_data_loss(&mut h, &fx).await;
    assert_eq!(fx.get("room").await, [0; 9], "data lost");
    let answered = fe.attach("c2", "room", &[]).await;
    assert_ne!(answered, before, "the write ran in a new lease, and said so");
    assert_eq!(fe.syncs, 1);
    assert_eq!(fx.get("room").await, fe.model.metrics("room"));
    assert_eq!(fx.get("room").await, [2, 0, 0, 1, 1, 0, 0, 0, 1]);
    let r = fe.keep_alive().await;
    assert_eq!(r.status, pb::SessionStatus::Active as i32);
    assert_eq!(fe.syncs, 1, "no further alarm");
}

/// A server on `h`'s Redis whose calls time out after 300 ms.
async fn server_with_short_redis_timeout(h: &Harness) -> crate::support::TestServer {
    let mut config = h.config();
    let occupancy::config::StoreConfig::Redis(rc) = &mut config.store else {
        unreachable!()
    };
    rc.timeout = Duration::from_millis(300);
    let store = occupancy::store::RedisStore::new(rc.clone()).expect("redis store");
    crate::support::TestServer::start(config, std::sync::Arc::new(store)).await
}

/// After Redis restarted empty, the front end's KeepAlive reaches Redis
/// but its answer is lost: Redis stalls past the replica's timeout (the
/// replica answers UNAVAILABLE), then runs the queued call, which opens a
/// new empty lease. The retry the README recommends answered ACTIVE, so
/// the loss went unnoticed; its epoch tells.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keepalive_answer_lost_to_a_redis_stall_is_noticed_by_its_epoch() {
    let mut h = Harness::redis(Duration::from_secs(60));
    let s = server_with_short_redis_timeout(&h).await;
    let fx = Fx::new(&s).await;
    let (mut fe, before) = front_end_then_data_loss(&mut h, &fx).await;
    let redis = h.redis_server_mut();
    // Redis stalls: the KeepAlive is queued in its socket, the replica
    // gives up after its timeout
    redis.signal("STOP");
    let lost =
        fx.w.clone()
            .keep_alive(pb::KeepAliveRequest {
                session_id: "fe".into(),
                ttl_ms: 0,
            })
            .await;
    redis.signal("CONT");
    assert_eq!(lost.unwrap_err().code(), tonic::Code::Unavailable);
    // the retry: the queued KeepAlive ran first and opened an empty lease
    let r = fe.keep_alive().await;
    assert_eq!(
        r.status,
        pb::SessionStatus::Active as i32,
        "the stalled call opened the lease, so the retry finds it alive"
    );
    assert_ne!(r.session_epoch, before, "but in another lease");
    assert_eq!(fe.syncs, 1, "the front end re-sent its state");
    assert_eq!(fx.get("room").await, [1, 0, 0, 1, 1, 0, 0, 0, 1]);
}

/// The Rust client's Session re-sends its state after a KeepAlive whose
/// outcome is unknown, in the same stall as above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_helper_resyncs_after_a_keepalive_lost_to_a_redis_stall() {
    let mut h = Harness::redis(Duration::from_secs(60));
    let s = server_with_short_redis_timeout(&h).await;
    let fx = Fx::new(&s).await;
    let client = occupancy_client::Client::builder()
        .endpoint(s.url())
        .attempts(1)
        .request_timeout(Duration::from_secs(5))
        .connect()
        .unwrap();
    let session = client.session("front-1", Duration::from_secs(60)).await.unwrap();
    session.attach("c1", "lobby", &[occupancy_client::proto::Mode::Presence]);
    assert!(session.enter("c1", "lobby", "alice"));
    session.flush().await.unwrap();
    let before = session.epoch();
    assert_ne!(before, 0);
    assert_eq!(fx.get("lobby").await, [1, 0, 0, 1, 1, 0, 0, 0, 1]);
    let redis = h.redis_server_mut();
    redis.restart();
    redis_answers(&fx).await;
    redis.signal("STOP");
    let lost = session.keep_alive().await;
    redis.signal("CONT");
    assert!(lost.is_err(), "{lost:?}");
    assert!(session.keep_alive().await.unwrap(), "re-sent its state");
    assert_ne!(session.epoch(), before);
    assert_eq!(fx.get("lobby").await, [1, 0, 0, 1, 1, 0, 0, 0, 1]);
    session.close().await.unwrap();
    assert_eq!(fx.get("lobby").await, [0; 9]);
}

/// Redis restarts empty while writers are busy on three replica processes
/// (not between phases): writers that follow the epoch rule re-send their
/// sessions' state when an answer says so, and after their KeepAlive round
/// every count, every page and every subscriber equals the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_while_writers_are_active_ends_exact_after_one_round() {
    let d = Drive {
        seed: seed(),
        writers: 3,
        ops_per_writer: 400,
        channels: 10,
        expiries: false,
    };
    let _guard = SeedGuard(d.seed);
    let mut redis = RedisServer::start();
    let (_replicas, urls) = three_replicas(&redis);
    let mut sub = model_subscriber(&urls[1]).await;
    let model = Arc::new(Mutex::new(Model::default()));
    let load = start_load(&urls, &d, &model);
    until_loaded(&Fx::connect(&urls[2]).await).await;
    assert!(!load.is_finished(), "the writers finished before the fault");
    tokio::task::block_in_place(|| redis.restart());
    assert!(!load.is_finished(), "the writers finished during the restart");
    let report = load.await.expect("writers");
    let model = model.lock().unwrap().clone();
    let mismatches = check(&urls, &model, &universe(&d)).await;
    let sub_mismatches = check_subscribers(std::slice::from_mut(&mut sub), &model).await;
    eprintln!("redis restart under load: {report:?}, mismatches {mismatches}, subscriber mismatches {sub_mismatches}");
    assert!(
        report.syncs > 0,
        "no writer noticed the loss: the fault was not exercised"
    );
    // Statuses are not compared here: a writer's two sessions share
    // connection ids (resumes), and a write through a connection of the
    // other session, made before that session re-sent its lost state, is
    // rightly refused by the service where the model accepts it. The
    // writer re-sends its own state on such a surprise, so the counts,
    // pages and subscribers must still equal the model exactly.
    assert_eq!(mismatches, 0, "counts or pages differ from the model after one round");
    assert_eq!(sub_mismatches, 0, "the subscriber differs from the model");
}
