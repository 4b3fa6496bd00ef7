//! Where the store's Redis is: one server, or a Redis Cluster reached
//! through seed nodes. The rest of the store sends commands through
//! [`Conn`] and never asks which.
//!
//! On a cluster every key the store uses lies in one slot (the prefix
//! carries a hash tag: `RedisStore::new`), so redis-rs's cluster client
//! routes each call by its first key to the primary that serves the slot,
//! follows MOVED and ASK while slots move, and finds the promoted replica
//! after a failover. The event stream readers block in XREAD, so each has
//! a connection of its own ([`Topology::dedicated`]); the integration wake
//! channel is plain Pub/Sub, which a cluster delivers on every node, so
//! its subscriber connects to one seed at a time and moves on to the next
//! when that one fails ([`Topology::pubsub`]).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection, PubSub};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use super::RedisConfig;
use crate::config::defaults;
use crate::domain::InvalidInput;
use crate::error::Result;

/// How the store reaches Redis.
#[derive(Clone)]
pub(crate) enum Topology {
    /// One server.
    Single(Box<redis::Client>),
    /// A cluster, through its seed nodes.
    Cluster(Box<Seeds>),
}

/// How the store reaches a cluster.
#[derive(Clone)]
pub(crate) struct Seeds {
    /// The cluster client (it learns the slot map from a seed).
    client: ClusterClient,
    /// One plain client per seed, for Pub/Sub.
    seeds: Vec<redis::Client>,
}

/// A connection shared by the store's calls: multiplexed, reconnecting,
/// and connecting lazily, so the service starts while Redis is down.
#[derive(Clone)]
pub(crate) enum Conn {
    /// To one server.
    Single(ConnectionManager),
    /// To every primary of a cluster, replaced when it stops answering.
    Cluster(Healing),
    /// To every primary of a cluster, for one reader that reconnects by
    /// itself.
    ClusterPlain(ClusterConnection),
    /// To one server, not reconnecting by itself (its owner does).
    Plain(MultiplexedConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::ClusterPlain(c) => c.req_packed_command(cmd),
            Conn::Plain(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            Conn::ClusterPlain(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Plain(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.current.get_db(),
            Conn::ClusterPlain(c) => c.get_db(),
            Conn::Plain(c) => c.get_db(),
        }
    }
}

/// The URLs in a `--redis-url`: the one URL, or with `cluster` one or more
/// seed nodes separated by commas (empty items ignored).
pub fn seed_urls(url: &str, cluster: bool) -> Vec<&str> {
    if cluster {
        url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect()
    } else {
        vec![url]
    }
}

fn bad_url(e: RedisError) -> crate::Error {
    InvalidInput::new("redis_url", e.to_string()).into()
}

/// TCP_NODELAY: a pipeline or a large script call spans several segments,
/// and Nagle's algorithm would hold the last one until Redis' delayed ACK
/// (~40 ms).
fn tcp() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

/// The certificates to trust for `rediss://`, when a CA file is given.
fn certificates(cfg: &RedisConfig) -> Result<Option<redis::TlsCertificates>> {
    let Some(path) = &cfg.tls_ca_file else { return Ok(None) };
    let root_cert = super::read_ca_file(path).map_err(|e| InvalidInput::new("redis_ca_file", e))?;
    Ok(Some(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(root_cert),
    }))
}

fn single_client(url: &str, certs: Option<redis::TlsCertificates>) -> Result<redis::Client> {
    let info = url.into_connection_info().map_err(bad_url)?.set_tcp_settings(tcp());
    match certs {
        None => redis::Client::open(info).map_err(bad_url),
        Some(certs) => redis::Client::build_with_tls(info, certs).map_err(bad_url),
    }
}

/// The connection's own response timeout, a backstop only: every call is
/// bounded by `failure::within` (scaled for large batches).
fn backstop(cfg: &RedisConfig) -> Duration {
    (cfg.timeout * 10).max(defaults::REDIS_RESPONSE_TIMEOUT_FLOOR)
}

impl Topology {
    /// Validates `cfg`'s URLs and CA file and builds the clients; connects
    /// nothing.
    ///
    /// # Errors
    /// [`crate::Error::InvalidInput`] for a malformed URL or CA file.
    pub(crate) fn new(cfg: &RedisConfig) -> Result<Self> {
        let certs = certificates(cfg)?;
        if !cfg.cluster {
            return Ok(Topology::Single(Box::new(single_client(&cfg.url, certs)?)));
        }
        let urls = seed_urls(&cfg.url, true);
        if urls.is_empty() {
            return Err(InvalidInput::new("redis_url", "a cluster needs at least one seed node URL").into());
        }
        let seeds = urls
            .iter()
            .map(|u| single_client(u, certs.clone()))
            .collect::<Result<Vec<_>>>()?;
        let mut builder = ClusterClientBuilder::new(urls.iter().copied())
            .connection_timeout(cfg.timeout)
            .response_timeout(backstop(cfg))
            .tcp_settings(tcp());
        if let Some(certs) = certs {
            builder = builder.certs(certs);
        }
        Ok(Topology::Cluster(Box::new(Seeds {
            client: builder.build().map_err(bad_url)?,
            seeds,
        })))
    }

    /// The shared connection, connecting lazily.
    ///
    /// # Errors
    /// [`crate::Error::InvalidInput`] when the configuration cannot make
    /// one.
    pub(crate) fn shared(&self, cfg: &RedisConfig) -> Result<Conn> {
        match self {
            Topology::Single(client) => {
                let mgr_cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(cfg.timeout))
                    .set_response_timeout(Some(backstop(cfg)))
                    .set_number_of_retries(1)
                    .set_max_delay(defaults::REDIS_RECONNECT_MAX_DELAY);
                Ok(Conn::Single(
                    ConnectionManager::new_lazy_with_config((**client).clone(), mgr_cfg).map_err(bad_url)?,
                ))
            }
            Topology::Cluster(c) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(cfg.timeout)
                    .set_response_timeout(backstop(cfg));
                Ok(Conn::Cluster(Healing::new(c.client.clone(), config, cfg.timeout)))
            }
        }
    }

    /// A connection of its own (for a blocking read), connected now, that
    /// waits up to `response_timeout` for an answer.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub(crate) async fn dedicated(&self, connect_timeout: Duration, response_timeout: Duration) -> RedisResult<Conn> {
        match self {
            Topology::Single(client) => {
                let conn_cfg = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(response_timeout));
                Ok(Conn::Plain(
                    client.get_multiplexed_async_connection_with_config(&conn_cfg).await?,
                ))
            }
            Topology::Cluster(c) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(connect_timeout)
                    .set_response_timeout(response_timeout);
                Ok(Conn::ClusterPlain(
                    c.client.get_async_connection_with_config(config).await?,
                ))
            }
        }
    }

    /// A Pub/Sub connection; `attempt` picks the seed node on a cluster,
    /// so that successive attempts go round the seeds.
    ///
    /// # Errors
    /// When the server cannot be reached.
    pub(crate) async fn pubsub(&self, attempt: usize) -> RedisResult<PubSub> {
        let client = match self {
            Topology::Single(client) => client,
            Topology::Cluster(c) => &c.seeds[attempt % c.seeds.len()],
        };
        client.get_async_pubsub().await
    }
}

/// The shared cluster connection, replaced by a new one when calls have
/// gone unanswered for a while.
///
/// redis-rs's cluster client refreshes its slot map when a node fails, but
/// after a primary is killed a connection can keep routing a slot to the
/// dead node (every call times out) long after the cluster promoted its
/// replica. A fresh connection learns the slot map anew. "Unanswered"
/// counts calls that timed out, were cancelled by the caller's own bound,
/// or failed as unavailable: a call Redis answered, even with an error,
/// shows the connection works.
#[derive(Clone)]
pub(crate) struct Healing {
    current: ClusterConnection,
    generation: u64,
    shared: std::sync::Arc<HealingShared>,
}

struct HealingShared {
    client: ClusterClient,
    config: ClusterConfig,
    /// How long calls may go unanswered before the connection is replaced.
    stuck_after: Duration,
    state: std::sync::Mutex<HealingState>,
}

struct HealingState {
    conn: ClusterConnection,
    generation: u64,
    /// When the oldest call not followed by an answered one started.
    unanswered_since: Option<std::time::Instant>,
    /// Connections made anew since a call was last answered: the first
    /// is logged as a warning, the others (every `stuck_after` while the
    /// cluster stays away) at debug level, and the end once.
    replaced: u32,
}

impl Healing {
    fn new(client: ClusterClient, config: ClusterConfig, timeout: Duration) -> Self {
        let conn = client.get_pending_async_connection_with_config(config.clone());
        Self {
            current: conn.clone(),
            generation: 0,
            shared: std::sync::Arc::new(HealingShared {
                client,
                config,
                stuck_after: (timeout * 3).max(defaults::REDIS_STUCK_FLOOR),
                state: std::sync::Mutex::new(HealingState {
                    conn,
                    generation: 0,
                    unanswered_since: None,
                    replaced: 0,
                }),
            }),
        }
    }

    /// Takes the newest connection, replacing it first when calls have gone
    /// unanswered for `stuck_after`; notes that a call starts.
    fn before_call(&mut self) {
        let now = std::time::Instant::now();
        let mut st = crate::sync::lock(&self.shared.state);
        match st.unanswered_since {
            Some(t) if now.duration_since(t) >= self.shared.stuck_after => {
                if st.replaced == 0 {
                    tracing::warn!(
                        unanswered_for = ?now.duration_since(t),
                        "no Redis Cluster call answered for a while: connecting anew to learn the slot map"
                    );
                } else {
                    tracing::debug!(
                        replaced = st.replaced,
                        "Redis Cluster still unanswered: connecting anew"
                    );
                }
                st.replaced += 1;
                st.conn = self
                    .shared
                    .client
                    .get_pending_async_connection_with_config(self.shared.config.clone());
                st.generation += 1;
                st.unanswered_since = Some(now);
            }
            Some(_) => {}
            None => st.unanswered_since = Some(now),
        }
        if st.generation != self.generation {
            self.current = st.conn.clone();
            self.generation = st.generation;
        }
    }

    fn observe<T>(shared: &HealingShared, result: &RedisResult<T>) {
        let answered = match result {
            Ok(_) => true,
            Err(e) => !super::failure::is_unavailable(e),
        };
        if answered {
            let mut st = crate::sync::lock(&shared.state);
            st.unanswered_since = None;
            if st.replaced > 0 {
                tracing::info!(connections = st.replaced, "Redis Cluster answers again");
                st.replaced = 0;
            }
        }
    }

    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.before_call();
        let shared = self.shared.clone();
        let call = self.current.req_packed_command(cmd);
        Box::pin(async move {
            let result = call.await;
            Self::observe(&shared, &result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.before_call();
        let shared = self.shared.clone();
        let call = self.current.req_packed_commands(cmd, offset, count);
        Box::pin(async move {
            let result = call.await;
            Self::observe(&shared, &result);
            result
        })
    }
}
