//! The Rust client library: room occupancy semantics, failover with resume,
//! and the front-end Session helper against a real Redis.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use occupancy::domain::{
    Applied, Batch, ChannelName, HeldAttachment, KeepAliveOutcome, ListPage, ListQuery, Metrics, Pos, SessionId,
};
use occupancy::proto::v1::Mode;
use occupancy::store::{ChangeSink, History, ReapReport, Snapshot, Store, SyncOutcome};
use occupancy::Result as OResult;
use occupancy_client::proto::Mode as CMode;
use occupancy_client::{Client, OccupancyData};
use tokio_util::sync::CancellationToken;

use crate::fixture::Fx;
use crate::support::process::Proc;
use crate::support::{eventually, Harness, RedisServer};

type Seen = Arc<Mutex<Vec<OccupancyData>>>;

fn recorder() -> (Seen, impl Fn(OccupancyData) + Send + Sync + 'static) {
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    (seen, move |o| s.lock().unwrap().push(o))
}

async fn wait_for(seen: &Seen, what: &str, pred: impl Fn(&OccupancyData) -> bool) {
    eventually(Duration::from_secs(10), what, || async {
        seen.lock().unwrap().last().is_some_and(&pred).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_current_subscribe_and_unsubscribe() {
    let h = Harness::memory(Duration::from_secs(60));
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    fx.attach("fe", "c1", "room", &[Mode::Presence]).await;
    fx.enter("fe", "c1", "room", "alice").await;
    let client = Client::new(s.url()).unwrap();
    let occupancy = client.room("room").occupancy();
    // get: a one-off read
    let now = occupancy.get().await.unwrap();
    assert_eq!((now.connections, now.presence_members), (1, 1));
    assert_eq!(now.metrics.presence_clients, 1);
    // current: nothing received yet
    assert!(occupancy.current().is_none(), "no subscription, no current value");
    let (seen, listener) = recorder();
    let sub = occupancy.subscribe(listener);
    wait_for(&seen, "the snapshot", |o| o.connections == 1).await;
    assert_eq!(occupancy.current().unwrap().connections, 1);
    fx.attach("fe", "c2", "room", &[]).await;
    wait_for(&seen, "the change", |o| o.connections == 2).await;
    assert_eq!(occupancy.current().unwrap().connections, 2);
    // unsubscribe: the listener is not called again
    sub.unsubscribe();
    let before = seen.lock().unwrap().len();
    fx.attach("fe", "c3", "room", &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen.lock().unwrap().len(), before, "no call after unsubscribe");
    // dropping a subscription ends it too
    let (seen2, listener2) = recorder();
    let sub2 = occupancy.subscribe(listener2);
    wait_for(&seen2, "the snapshot", |o| o.connections == 3).await;
    drop(sub2);
    let before = seen2.lock().unwrap().len();
    fx.attach("fe", "c4", "room", &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen2.lock().unwrap().len(), before, "no call after drop");
    // the stream form
    let mut stream = occupancy.stream();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.connections, 4);
    fx.detach("fe", "c4", "room").await;
    let next = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.connections, 3);
    // a bad room name: get fails with INVALID_ARGUMENT, no retry storm
    let e = client.room("[bad").occupancy().get().await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::InvalidArgument));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_fail_over_to_another_replica_and_resume() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = Proc::spawn(&["--redis-url", &url]);
    let b = Proc::spawn(&["--redis-url", &url]);
    let writer = Client::new(b.url()).unwrap();
    // the client uses A first, then B
    let client = Client::builder().endpoint(a.url()).endpoint(b.url()).connect().unwrap();
    let occupancy = client.room("room").occupancy();
    let (seen, listener) = recorder();
    let _sub = occupancy.subscribe(listener);
    wait_for(&seen, "the snapshot", |o| o.connections == 0).await;
    let session = writer.session("fe", Duration::from_secs(30)).await.unwrap();
    for i in 0..5 {
        session.attach(&format!("c{i}"), "room", &[CMode::Subscribe]);
    }
    session.flush().await.unwrap();
    wait_for(&seen, "five connections", |o| o.connections == 5).await;
    // replica A dies; changes go on meanwhile
    a.signal("KILL");
    for i in 5..12 {
        session.attach(&format!("c{i}"), "room", &[CMode::Subscribe]);
    }
    session.flush().await.unwrap();
    wait_for(&seen, "twelve connections, through replica B", |o| o.connections == 12).await;
    session.detach("c0", "room");
    session.flush().await.unwrap();
    wait_for(&seen, "eleven", |o| o.connections == 11).await;
    // never backwards: counts only rose until the final detach
    let counts: Vec<u32> = seen.lock().unwrap().iter().map(|o| o.connections).collect();
    let peak = counts.iter().position(|c| *c == 12).unwrap();
    assert!(
        counts[..=peak].windows(2).all(|w| w[0] <= w[1]),
        "went backwards: {counts:?}"
    );
    let ids: Vec<String> = seen.lock().unwrap().iter().map(|o| o.event_id.clone()).collect();
    assert!(ids.windows(2).all(|w| w[0][..32] < w[1][..32]), "ids not increasing");
    assert_eq!(occupancy.current().unwrap().connections, 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_helper_keeps_its_lease_and_resyncs_after_data_loss() {
    let mut h = Harness::redis(Duration::from_secs(1));
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    let client = Client::new(s.url()).unwrap();
    let session = client.session("front-1", Duration::from_secs(1)).await.unwrap();
    for i in 0..50 {
        let conn = format!("c{i}");
        session.attach(&conn, "lobby", &[CMode::Presence, CMode::Subscribe]);
        assert!(session.enter(&conn, "lobby", &format!("user{}", i % 10)));
    }
    assert!(
        !session.enter("nobody", "lobby", "x"),
        "enter needs a presence attachment"
    );
    session.flush().await.unwrap();
    assert_eq!(fx.get("lobby").await, [50, 0, 50, 50, 50, 0, 0, 0, 10]);
    // the helper keeps the 1 s lease alive well past its length
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(fx.get("lobby").await[0], 50, "lease kept alive");
    // Redis loses everything: the next KeepAlive finds the session unknown
    // and the helper re-sends its whole state
    let redis = h.redis_server_mut();
    redis.restart();
    eventually(Duration::from_secs(10), "the state to be restored", || async {
        let r =
            fx.r.clone()
                .get_occupancy(occupancy::proto::v1::GetOccupancyRequest {
                    channel: "lobby".into(),
                })
                .await
                .ok()?;
        let m = r.into_inner().channel?.status?.occupancy?.metrics?;
        (m.connections == 50 && m.presence_members == 50).then_some(())
    })
    .await;
    assert!(session.resyncs() >= 1);
    // closing removes everything at once
    session.close().await.unwrap();
    assert_eq!(fx.get("lobby").await, [0; 9]);
    // dropping a session closes it too
    let other = client.session("front-2", Duration::from_secs(30)).await.unwrap();
    other.attach("x1", "hall", &[]);
    other.flush().await.unwrap();
    assert_eq!(fx.get("hall").await[0], 1);
    drop(other);
    eventually(Duration::from_secs(5), "the dropped session to close", || async {
        (fx.get("hall").await[0] == 0).then_some(())
    })
    .await;
}

/// A store that holds every SyncSession at a gate until the test opens it,
/// and records the order in which syncs and closes take effect.
struct GatedSyncs {
    inner: Arc<dyn Store>,
    arrived: tokio::sync::Notify,
    gate: tokio::sync::Semaphore,
    log: Mutex<Vec<&'static str>>,
    closes: tokio::sync::watch::Sender<usize>,
}

#[async_trait::async_trait]
impl Store for GatedSyncs {
    async fn write(&self, session: &SessionId, batch: Batch<'_>) -> OResult<Applied> {
        self.inner.write(session, batch).await
    }
    async fn keep_alive_opening(
        &self,
        session: &SessionId,
        owner: &str,
        ttl_ms: Option<u64>,
        open_epoch: u64,
    ) -> OResult<KeepAliveOutcome> {
        self.inner.keep_alive_opening(session, owner, ttl_ms, open_epoch).await
    }
    async fn close_session_as(&self, session: &SessionId, owner: &str) -> OResult<Option<u64>> {
        let r = self.inner.close_session_as(session, owner).await;
        self.log.lock().unwrap().push("close");
        self.closes.send_modify(|n| *n += 1);
        r
    }
    async fn get(&self, channels: &[ChannelName]) -> OResult<Vec<Metrics>> {
        self.inner.get(channels).await
    }
    async fn list(&self, query: &ListQuery) -> OResult<ListPage> {
        self.inner.list(query).await
    }
    async fn stats(&self) -> OResult<occupancy::domain::Totals> {
        self.inner.stats().await
    }
    async fn session_state(&self, session: &SessionId) -> OResult<Vec<HeldAttachment>> {
        self.inner.session_state(session).await
    }
    async fn sync_session_as(
        &self,
        session: &SessionId,
        owner: &str,
        desired: &[HeldAttachment],
        ttl_ms: Option<u64>,
    ) -> OResult<SyncOutcome> {
        self.arrived.notify_one();
        self.gate.acquire().await.expect("gate").forget();
        let r = self.inner.sync_session_as(session, owner, desired, ttl_ms).await;
        self.log.lock().unwrap().push("sync");
        r
    }
    async fn reap(&self) -> OResult<ReapReport> {
        self.inner.reap().await
    }
    fn shards(&self) -> u32 {
        self.inner.shards()
    }
    async fn snapshot(&self, channels: &[ChannelName]) -> OResult<Snapshot> {
        self.inner.snapshot(channels).await
    }
    async fn history(&self, shard: u32, after: Pos, limit: usize) -> OResult<History> {
        self.inner.history(shard, after, limit).await
    }
    fn feed(&self, sink: Arc<dyn ChangeSink>, cancel: CancellationToken) {
        self.inner.feed(sink, cancel);
    }
    async fn ping(&self) -> OResult<()> {
        self.inner.ping().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_session_waits_for_a_resync_in_flight() {
    let h = Harness::memory(Duration::from_secs(60));
    let store = Arc::new(GatedSyncs {
        inner: h.store(),
        arrived: tokio::sync::Notify::new(),
        gate: tokio::sync::Semaphore::new(0),
        log: Mutex::new(Vec::new()),
        closes: tokio::sync::watch::channel(0).0,
    });
    let s = crate::support::TestServer::start(h.config(), store.clone()).await;
    let fx = Fx::new(&s).await;
    let client = Client::new(s.url()).unwrap();
    let session = client.session("front-1", Duration::from_secs(1)).await.unwrap();
    session.attach("c1", "lobby", &[CMode::Subscribe]);
    session.flush().await.unwrap();
    assert_eq!(fx.get("lobby").await[0], 1);
    // the service forgets the session; the helper's next KeepAlive (within
    // a third of its 1 s TTL) finds it unknown and starts re-sending
    assert!(fx.close("front-1").await);
    tokio::time::timeout(Duration::from_secs(5), store.arrived.notified())
        .await
        .expect("a re-sync within 5 s");
    store.log.lock().unwrap().clear();
    let mut closes = store.closes.subscribe();
    let before = *closes.borrow_and_update();
    // close while that re-sync is held: CloseSession must not overtake it
    let closing = tokio::spawn(session.close());
    let overtook = tokio::time::timeout(Duration::from_millis(500), closes.wait_for(|n| *n > before))
        .await
        .is_ok();
    store.gate.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), closing)
        .await
        .expect("close returns")
        .unwrap()
        .unwrap();
    assert!(
        !overtook,
        "CloseSession reached the service while a re-sync was in flight"
    );
    assert_eq!(*store.log.lock().unwrap(), ["sync", "close"]);
    assert_eq!(fx.get("lobby").await, [0; 9], "closing removed everything");
}

/// `Client::new` takes HOST:PORT and localhost:PORT as well as URLs, and
/// refuses at once what it cannot use (before, "127.0.0.1:50051" was
/// accepted and every call failed with an invalid URI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_as_host_port_or_url() {
    let h = Harness::memory(Duration::from_secs(60));
    let s = h.server().await;
    Fx::new(&s).await.attach("fe", "c1", "room", &[]).await;
    let port = s.addr.port();
    for endpoint in [
        s.addr.to_string(),
        format!("localhost:{port}"),
        format!("http://127.0.0.1:{port}"),
    ] {
        let client = Client::new(endpoint.clone()).unwrap();
        let now = client.room("room").occupancy().get().await;
        assert_eq!(now.map(|o| o.connections).ok(), Some(1), "{endpoint}");
    }
    // https:// means TLS: against this plain server the call fails as
    // unreachable, it is not refused as an endpoint
    let client = Client::builder()
        .endpoint(format!("https://127.0.0.1:{port}"))
        .attempts(1)
        .connect()
        .unwrap();
    let err = client.room("room").occupancy().get().await.unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    for bad in ["localhost", "ftp://x:1", ""] {
        let err = Client::new(bad).unwrap_err();
        assert!(
            matches!(err, occupancy_client::Error::InvalidEndpoint(_)),
            "{bad:?}: {err}"
        );
    }
}

/// Redis restarts empty and the front end's next call is a write: the
/// batch names the lease it was built under, is refused for its epoch, and
/// the `Session` re-sends its whole state before `flush` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_helper_resyncs_when_a_write_finds_another_lease() {
    let mut h = Harness::redis(Duration::from_secs(60));
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    let client = Client::new(s.url()).unwrap();
    let session = client.session("front-1", Duration::from_secs(60)).await.unwrap();
    session.attach("c1", "lobby", &[CMode::Presence]);
    assert!(session.enter("c1", "lobby", "alice"));
    session.flush().await.unwrap();
    let before = session.epoch();
    assert_ne!(before, 0);
    let redis = h.redis_server_mut();
    redis.restart();
    eventually(Duration::from_secs(10), "redis to answer", || async {
        fx.w.clone()
            .keep_alive(occupancy::proto::v1::KeepAliveRequest {
                session_id: "probe".into(),
                ttl_ms: 0,
            })
            .await
            .ok()
    })
    .await;
    session.attach("c2", "lobby", &[]);
    session.flush().await.unwrap();
    assert_ne!(session.epoch(), before, "the state is in a new lease");
    assert!(session.resyncs() >= 1);
    assert_eq!(fx.get("lobby").await, [2, 0, 0, 1, 1, 0, 0, 0, 1]);
    session.close().await.unwrap();
    assert_eq!(fx.get("lobby").await, [0; 9]);
}
