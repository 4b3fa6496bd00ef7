//! Test support: private Redis servers, in-process servers over either
//! store, and gRPC clients.

pub mod auth;
pub mod certs;
pub mod cluster;
pub mod command;
pub mod deps;
pub mod metrics;
pub mod nginx;
pub mod process;
pub mod receiver;
pub mod redis;
pub mod sub;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use occupancy::config::Config;
use occupancy::proto::v1 as pb;
use occupancy::store::{MemoryStore, PartitionedStore, RedisConfig, Store};
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};

pub use self::redis::RedisServer;

/// Read-side client.
pub type ReadClient = pb::occupancy_service_client::OccupancyServiceClient<Channel>;
/// Write-side client.
pub type WriteClient = pb::connection_service_client::ConnectionServiceClient<Channel>;

/// Where a harness keeps state: one memory store shared by its "replicas",
/// or one private Redis with a store per replica.
pub enum Backend {
    /// In-memory.
    Memory(Arc<MemoryStore>),
    /// In-memory, split into [`PARTITIONS`] partitions behind the router
    /// a partitioned Redis deployment uses.
    Partitioned(Arc<PartitionedStore>),
    /// Redis.
    Redis(RedisServer),
    /// A private Redis Cluster (three primaries, a replica each), reached
    /// through every node as a seed, the state split into
    /// [`CLUSTER_PARTITIONS`] partitions.
    Cluster(cluster::RedisCluster),
}

/// The shortest lease the shared suites give sessions on the cluster. A
/// cluster write waits for a replica's acknowledgement, and on a loaded
/// machine two calls of one test can be seconds apart; a suite's short
/// lease (chosen so that expiry tests are quick) would then run out in
/// tests that never meant it to. Expiry tests wait [`Harness::expiry_wait`].
pub const CLUSTER_MIN_TTL: Duration = Duration::from_secs(10);

/// The partitions of the in-memory partitioned backend.
pub const PARTITIONS: u32 = 3;

/// The partitions of the cluster backend: two on each of its three
/// primaries, so that writes of several partitions share a node's calls
/// (`apply_many`) in every suite run on it.
pub const CLUSTER_PARTITIONS: u32 = 6;

/// A store backend plus the settings every replica of a test uses.
pub struct Harness {
    /// The backend.
    pub backend: Backend,
    /// Lease of new sessions.
    pub ttl: Duration,
}

impl Harness {
    /// In-memory backend.
    pub fn memory(ttl: Duration) -> Self {
        Self {
            backend: Backend::Memory(Arc::new(MemoryStore::new(ttl))),
            ttl,
        }
    }

    /// In-memory partitions behind the router.
    pub fn partitioned(ttl: Duration) -> Self {
        let parts: Vec<Arc<dyn Store>> = (0..PARTITIONS)
            .map(|_| {
                Arc::new(MemoryStore::with_log(
                    ttl,
                    1,
                    occupancy::config::defaults::STREAM_MAX_LEN as usize,
                )) as Arc<dyn Store>
            })
            .collect();
        Self {
            backend: Backend::Partitioned(Arc::new(PartitionedStore::new(parts).expect("partitions"))),
            ttl,
        }
    }

    /// A private redis-server backend.
    pub fn redis(ttl: Duration) -> Self {
        Self {
            backend: Backend::Redis(RedisServer::start()),
            ttl,
        }
    }

    /// A private Redis Cluster backend.
    pub fn cluster(ttl: Duration) -> Self {
        Self {
            backend: Backend::Cluster(cluster::RedisCluster::start()),
            ttl,
        }
    }

    /// The partitions the state is split into (1: not split).
    pub fn partitions(&self) -> u32 {
        match &self.backend {
            Backend::Partitioned(_) => PARTITIONS,
            Backend::Cluster(_) => self.redis_config().map_or(1, |c| c.partitions),
            Backend::Memory(_) | Backend::Redis(_) => 1,
        }
    }

    /// `count` channel names `{stem}N` that all live in one partition, and
    /// one that lives in another (`None` when the state is not split).
    pub fn names_in_one_partition(&self, stem: &str, count: usize) -> (Vec<String>, Option<String>) {
        let n = self.partitions();
        let of = |name: &str| occupancy::domain::partition::partition_of(name, n);
        let mut same = Vec::with_capacity(count);
        let mut other = None;
        for i in 0..(count * n as usize * 20 + 100) {
            let name = format!("{stem}{i:05}");
            if of(&name) == 0 {
                if same.len() < count {
                    same.push(name);
                }
            } else if other.is_none() {
                other = Some(name);
            }
            if same.len() == count && (other.is_some() || n == 1) {
                break;
            }
        }
        assert_eq!(same.len(), count, "names in partition 0");
        (same, other)
    }

    /// How long a test waits for a lease of this harness to run out and be
    /// reaped: a few leases, plus room for a loaded machine.
    pub fn expiry_wait(&self) -> Duration {
        self.ttl * 3 + Duration::from_secs(10)
    }

    /// The private cluster of a cluster harness.
    pub fn redis_cluster(&self) -> &cluster::RedisCluster {
        match &self.backend {
            Backend::Cluster(c) => c,
            _ => panic!("a cluster harness"),
        }
    }

    /// The private cluster of a cluster harness, to change.
    pub fn cluster_mut(&mut self) -> &mut cluster::RedisCluster {
        match &mut self.backend {
            Backend::Cluster(c) => c,
            _ => panic!("a cluster harness"),
        }
    }

    /// The private Redis of a Redis harness.
    pub fn redis_server(&self) -> &RedisServer {
        match &self.backend {
            Backend::Redis(r) => r,
            _ => panic!("a Redis harness"),
        }
    }

    /// [`Harness::redis_server`], to restart or signal it.
    pub fn redis_server_mut(&mut self) -> &mut RedisServer {
        match &mut self.backend {
            Backend::Redis(r) => r,
            _ => panic!("a Redis harness"),
        }
    }

    /// Redis configuration for this harness's server.
    pub fn redis_config(&self) -> Option<RedisConfig> {
        match &self.backend {
            Backend::Memory(_) | Backend::Partitioned(_) => None,
            Backend::Redis(r) => {
                let mut c = RedisConfig::new(r.url());
                c.default_ttl = self.ttl;
                c.key_prefix = "test".into();
                Some(c)
            }
            Backend::Cluster(cl) => {
                let mut c = RedisConfig::new(cl.urls().join(","));
                c.cluster = true;
                c.partitions = CLUSTER_PARTITIONS;
                c.replica_acks = 1;
                // six redis-server processes per test on a shared 2-core
                // machine, next to other tests: a call waits for its
                // replica too
                c.timeout = Duration::from_secs(3);
                c.default_ttl = self.ttl;
                c.key_prefix = "test".into();
                Some(c)
            }
        }
    }

    /// A store handle as one replica would hold it: the shared memory
    /// store, or a new Redis store (own connection) on the same Redis.
    pub fn store(&self) -> Arc<dyn Store> {
        match &self.backend {
            Backend::Memory(m) => m.clone(),
            Backend::Partitioned(p) => p.clone(),
            Backend::Redis(_) | Backend::Cluster(_) => {
                occupancy::store::redis::open(self.redis_config().expect("redis")).expect("redis store")
            }
        }
    }

    /// Server configuration with fast reaping for tests.
    pub fn config(&self) -> Config {
        let mut c = match self.redis_config() {
            Some(r) => Config::redis(r),
            None => Config::memory(),
        };
        c.session_ttl = self.ttl;
        c.reap_interval = Duration::from_millis(50);
        c.health_interval = Duration::from_millis(100);
        c.shutdown_grace = Duration::from_secs(2);
        c
    }

    /// Starts a server replica over a new store handle.
    pub async fn server(&self) -> TestServer {
        TestServer::start(self.config(), self.store()).await
    }

    /// Starts a server replica with its HTTP side too.
    pub async fn http_server(&self) -> TestServer {
        TestServer::start_with_http(self.config(), self.store()).await
    }
}

/// An in-process server on a loopback port, shut down on drop.
pub struct TestServer {
    /// Its address.
    pub addr: SocketAddr,
    /// Its event hub.
    pub hub: Arc<occupancy::fanout::Hub>,
    /// Its HTTP side's address, when started with one.
    pub http: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<occupancy::Result<()>>>,
}

impl TestServer {
    /// Starts `run_with_store` on port 0.
    pub async fn start(config: Config, store: Arc<dyn Store>) -> Self {
        Self::start_inner(config, store, false).await
    }

    /// [`TestServer::start`] with the HTTP side on another port 0.
    pub async fn start_with_http(config: Config, store: Arc<dyn Store>) -> Self {
        Self::start_inner(config, store, true).await
    }

    async fn start_inner(config: Config, store: Arc<dyn Store>, with_http: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let http = if with_http {
            Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind http"))
        } else {
            None
        };
        let http_addr = http.as_ref().map(|l| l.local_addr().expect("http addr"));
        let (tx, rx) = oneshot::channel();
        let hub = occupancy::fanout::Hub::new(store.shards());
        let task = tokio::spawn(occupancy::server::run_with_http(
            listener,
            http,
            config,
            store,
            hub.clone(),
            async {
                let _ = rx.await;
            },
        ));
        Self {
            addr,
            hub,
            http: http_addr,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The HTTP side's base URL (`http://127.0.0.1:PORT`).
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http.expect("server started with its HTTP side"))
    }

    /// A connected channel.
    pub async fn channel(&self) -> Channel {
        self.endpoint(Duration::from_secs(10))
            .connect()
            .await
            .expect("connect to test server")
    }

    /// A plaintext channel, or why it could not connect.
    pub async fn channel_result(&self) -> Result<Channel, tonic::transport::Error> {
        self.endpoint(Duration::from_secs(5)).connect().await
    }

    /// The server's endpoint with calls bounded by `timeout`.
    fn endpoint(&self, timeout: Duration) -> Endpoint {
        Endpoint::from_shared(self.url())
            .expect("url")
            .connect_timeout(Duration::from_secs(5))
            .timeout(timeout)
    }

    /// Read-side client.
    pub async fn read(&self) -> ReadClient {
        ReadClient::new(self.channel().await)
    }

    /// Write-side client.
    pub async fn write(&self) -> WriteClient {
        WriteClient::new(self.channel().await)
    }
}

impl TestServer {
    /// Stops the server (as on SIGTERM) and waits for it.
    pub async fn stop(mut self) -> occupancy::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("task").await.expect("server task panicked")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A plaintext channel to `url`.
pub async fn connect(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .expect("url")
        .connect()
        .await
        .expect("connect")
}

/// Polls `check` until it returns `Some`, at most `within`; panics with
/// `what` otherwise. For state that changes on a timer (lease expiry),
/// where no signal exists.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Builds attach modes.
pub fn modes(m: &[pb::Mode]) -> Vec<i32> {
    m.iter().map(|m| *m as i32).collect()
}
