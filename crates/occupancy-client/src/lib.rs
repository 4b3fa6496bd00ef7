//! Rust client for the occupancy service.
//!
//! ```no_run
//! # async fn demo() -> Result<(), occupancy_client::Error> {
//! use occupancy_client::Client;
//!
//! // several replicas, or one load balancer address
//! let client = Client::builder()
//!     .endpoint("http://127.0.0.1:50051")
//!     .endpoint("http://127.0.0.1:50052")
//!     .connect()?;
//! let occupancy = client.room("rooms:lobby").occupancy();
//! let now = occupancy.get().await?;
//! println!("{} connections, {} in presence", now.connections, now.presence_members);
//! let sub = occupancy.subscribe(|o| println!("now {} connections", o.connections));
//! // ... later
//! sub.unsubscribe();
//! # Ok(()) }
//! ```
//!
//! - [`Client`]: endpoints with failover, TLS for `https://` URLs (the
//!   system's roots or a CA of your own), an API key or token sent with
//!   every call, and retries of every idempotent call (all of them but
//!   creating an integration rule and sending a test event).
//! - [`RoomOccupancy`]: Ably Chat's room occupancy shape: [`get`]
//!   (one-off), [`subscribe`] returning a [`Subscription`] that
//!   [`unsubscribe`]s (or is dropped), [`current`] (the latest value
//!   received, no network call), and [`stream`] for async code.
//!   Subscriptions survive a replica going away: they reconnect to another
//!   endpoint with `resume_from`, and a listener never sees a value go
//!   backwards.
//! - [`Follow`] ([`Client::follow`]): the reconnect-and-resume loop under
//!   those subscriptions, for any subscription request (several channels,
//!   a prefix, every channel), leaving failures to the caller.
//! - [`Session`]: the front end's side: opens the lease, keeps it alive,
//!   batches writes into `Apply` calls, re-sends its whole state with
//!   `SyncSession` when the service lost it, and closes on drop.
//! - Integration rules (occupancy events pushed to webhooks), for
//!   operators: [`Client::create_rule`], [`Client::list_rules`],
//!   [`Client::update_rule`], [`Client::delete_rule`],
//!   [`Client::test_rule`], [`Client::dead_letters`] and
//!   [`Client::replay_dead_letters`], or the generated client from
//!   [`Client::integration_service`].
//!
//! [`get`]: RoomOccupancy::get
//! [`subscribe`]: RoomOccupancy::subscribe
//! [`unsubscribe`]: Subscription::unsubscribe
//! [`current`]: RoomOccupancy::current
//! [`stream`]: RoomOccupancy::stream

mod credentials;
mod follow;
mod integrations;
mod room;
mod session;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

pub use credentials::{AuthChannel, Credentials};
pub use follow::{Follow, Followed};
pub use room::{OccupancyData, OccupancyStream, Room, RoomOccupancy, Subscription};
pub use session::Session;

/// Generated protobuf types and gRPC clients of `occupancy.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("occupancy.v1");
}

use proto::connection_service_client::ConnectionServiceClient;
use proto::occupancy_service_client::OccupancyServiceClient;

/// Metadata key the service sets on an UNAVAILABLE answer when it is up
/// but its store (Redis) is not, so callers can tell that apart from a
/// service that cannot be reached at all.
pub const STORE_UNAVAILABLE_METADATA: &str = "occupancy-store-unavailable";

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No endpoint was given, or one is not a HOST:PORT or a valid
    /// `http://` / `https://` URL.
    #[error("invalid endpoint {0}")]
    InvalidEndpoint(String),
    /// The service answered with an error (after retries where the error
    /// was transient).
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] Status),
}

impl Error {
    /// The gRPC code, if the service answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Status(s) => Some(s.code()),
            Error::InvalidEndpoint(_) => None,
        }
    }

    /// Whether the service answered that its store (Redis) is unavailable:
    /// the service is up, retry later.
    pub fn is_store_unavailable(&self) -> bool {
        matches!(self, Error::Status(s) if s.code() == Code::Unavailable
            && s.metadata().contains_key(STORE_UNAVAILABLE_METADATA))
    }

    /// Whether no endpoint could be reached or answered in time (and the
    /// service did not say its store is down).
    pub fn is_unreachable(&self) -> bool {
        !self.is_store_unavailable() && matches!(self.code(), Some(Code::Unavailable | Code::DeadlineExceeded))
    }
}

/// The gRPC URL for an endpoint as people write it: `HOST:PORT`
/// (`127.0.0.1:50051`, `localhost:50051`, `[::1]:50051`) means plain
/// `http://HOST:PORT`, as grpcurl and the Python and Node clients take it;
/// `http://…` and `https://…` (TLS) URLs are used as given.
///
/// # Errors
/// [`Error::InvalidEndpoint`] naming the endpoint and what is wrong with
/// it: empty, another scheme, no host, or a `HOST` without `:PORT`.
pub fn endpoint_url(endpoint: &str) -> Result<String, Error> {
    let e = endpoint.trim();
    let bad = |why: &str| Error::InvalidEndpoint(format!("{e:?}: {why}"));
    if e.is_empty() {
        return Err(bad("empty (give HOST:PORT, http://HOST:PORT or https://HOST:PORT)"));
    }
    let url = match e.split_once("://") {
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") => {
            e.to_string()
        }
        Some((scheme, _)) => {
            return Err(bad(&format!(
                "unsupported scheme {scheme}:// (use HOST:PORT, http:// or https://)"
            )))
        }
        None => format!("http://{e}"),
    };
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .map_err(|err| bad(&format!("not a HOST:PORT or URL ({err})")))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host (give HOST:PORT)"));
    }
    // a bare name without a port would silently mean port 80
    if !e.contains("://") && uri.port().is_none() {
        return Err(bad("no port (give HOST:PORT, e.g. 127.0.0.1:50051)"));
    }
    Ok(url)
}

/// Whether a failed call may succeed on another try or replica.
pub(crate) fn transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded | Code::Aborted
    )
}

/// Builds a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    attempts: usize,
    backoff: Duration,
    credential: Option<String>,
    ca: Option<Vec<u8>>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            attempts: 4,
            backoff: Duration::from_millis(100),
            credential: None,
            ca: None,
        }
    }
}

impl ClientBuilder {
    /// Adds an endpoint: `HOST:PORT` or `http://HOST:PORT` (plain), or
    /// `https://HOST:PORT` for TLS with the system's roots (see
    /// [`endpoint_url`]). Calls go to one endpoint and move to the next
    /// when it fails.
    #[must_use]
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoints.push(url.into());
        self
    }

    /// Bound on establishing a connection (default 2 s).
    #[must_use]
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Bound on each unary call (default 10 s).
    #[must_use]
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// Tries of a call across endpoints before giving up (default 4).
    #[must_use]
    pub fn attempts(mut self, n: usize) -> Self {
        self.attempts = n.max(1);
        self
    }

    /// Wait before the first retry, doubling after (default 100 ms).
    #[must_use]
    pub fn backoff(mut self, d: Duration) -> Self {
        self.backoff = d;
        self
    }

    /// Sends an API key (`KEY_ID:SECRET`) with every call.
    #[must_use]
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.credential = Some(key.into());
        self
    }

    /// Sends a signed token with every call (instead of a key). A
    /// subscription made with a token ends when the token expires; make a
    /// new client with a fresh token and subscribe again.
    #[must_use]
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.credential = Some(token.into());
        self
    }

    /// Trusts the CA certificates in `pem` for `https://` endpoints
    /// (instead of the system's roots).
    #[must_use]
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(pem.into());
        self
    }

    /// The client. Connections are made lazily, on first use.
    ///
    /// # Errors
    /// [`Error::InvalidEndpoint`] when no endpoint was given or one is
    /// neither `HOST:PORT` nor an `http://` or `https://` URL.
    pub fn connect(self) -> Result<Client, Error> {
        if self.endpoints.is_empty() {
            return Err(Error::InvalidEndpoint("(none): give at least one".into()));
        }
        let credentials = match &self.credential {
            None => Credentials::default(),
            Some(c) => Credentials::bearer(c)
                .ok_or_else(|| Error::InvalidEndpoint("the credential must be visible ASCII".into()))?,
        };
        let mut channels = Vec::with_capacity(self.endpoints.len());
        for given in &self.endpoints {
            let url = &endpoint_url(given)?;
            let mut ep = Endpoint::from_shared(url.clone())
                .map_err(|e| Error::InvalidEndpoint(format!("{url}: {e}")))?
                .connect_timeout(self.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(20))
                .keep_alive_while_idle(true);
            if url.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://")) {
                let tls = match &self.ca {
                    Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                    None => ClientTlsConfig::new().with_native_roots(),
                };
                ep = ep
                    .tls_config(tls)
                    .map_err(|e| Error::InvalidEndpoint(format!("{url}: {e}")))?;
            }
            channels.push(AuthChannel::new(ep.connect_lazy(), credentials.clone()));
        }
        Ok(Client {
            inner: Arc::new(Inner {
                channels,
                current: AtomicUsize::new(0),
                attempts: self.attempts,
                backoff: self.backoff,
                request_timeout: self.request_timeout,
            }),
        })
    }
}

struct Inner {
    channels: Vec<AuthChannel>,
    current: AtomicUsize,
    attempts: usize,
    backoff: Duration,
    request_timeout: Duration,
}

/// A connection to the service through one or more endpoints. Cheap to
/// clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.inner.channels.len())
            .finish()
    }
}

impl Client {
    /// A builder.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A client for one endpoint with the defaults.
    ///
    /// # Errors
    /// As [`ClientBuilder::connect`].
    pub fn new(url: impl Into<String>) -> Result<Client, Error> {
        Self::builder().endpoint(url).connect()
    }

    /// A room (channel) by name.
    pub fn room(&self, name: impl Into<String>) -> Room {
        Room::new(self.clone(), name.into())
    }

    /// Opens a front end's session (see [`Session`]).
    ///
    /// # Errors
    /// As the first KeepAlive.
    pub async fn session(&self, id: impl Into<String>, ttl: Duration) -> Result<Session, Error> {
        Session::open(self.clone(), id.into(), ttl).await
    }

    /// The channel of the endpoint in use.
    pub(crate) fn channel(&self) -> (usize, AuthChannel) {
        let i = self.inner.current.load(Ordering::Relaxed) % self.inner.channels.len();
        (i, self.inner.channels[i].clone())
    }

    /// Moves to the next endpoint after `failed` failed (unless another
    /// caller already moved on).
    pub(crate) fn fail_over(&self, failed: usize) {
        let n = self.inner.channels.len();
        let _ = self
            .inner
            .current
            .compare_exchange(failed, (failed + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Bound on each unary call, and on opening a subscription.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// The wait before retry number `attempt` (from 0): the builder's
    /// backoff, doubling, at most 5 s.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        self.inner
            .backoff
            .saturating_mul(1 << attempt.min(6))
            .min(Duration::from_secs(5))
    }

    /// Runs `f` on the current endpoint, failing over and retrying
    /// transient errors.
    pub(crate) async fn call<T, F, Fut>(&self, f: F) -> Result<T, Error>
    where
        F: Fn(AuthChannel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut last = None;
        for attempt in 0..self.inner.attempts {
            if attempt > 0 {
                tokio::time::sleep(self.backoff(attempt as u32 - 1)).await;
            }
            let (i, ch) = self.channel();
            let r = match tokio::time::timeout(self.inner.request_timeout, f(ch)).await {
                Ok(r) => r,
                Err(_) => Err(Status::deadline_exceeded("no answer within the request timeout")),
            };
            match r {
                Ok(v) => return Ok(v),
                Err(s) if transient(&s) => {
                    tracing::debug!(endpoint = i, code = ?s.code(), "call failed, trying the next endpoint");
                    self.fail_over(i);
                    last = Some(s);
                }
                Err(s) => return Err(s.into()),
            }
        }
        Err(last
            .unwrap_or_else(|| Status::unavailable("no endpoint answered"))
            .into())
    }

    /// The channel to the endpoint in use (with the client's credential).
    pub fn occupancy_service_channel(&self) -> AuthChannel {
        self.channel().1
    }

    /// Moves to the next endpoint.
    pub fn rotate(&self) {
        let (i, _) = self.channel();
        self.fail_over(i);
    }

    /// The raw read-side client on the current endpoint.
    pub fn occupancy_service(&self) -> OccupancyServiceClient<AuthChannel> {
        OccupancyServiceClient::new(self.channel().1)
    }

    /// The raw write-side client on the current endpoint.
    pub fn connection_service(&self) -> ConnectionServiceClient<AuthChannel> {
        ConnectionServiceClient::new(self.channel().1)
    }

    /// Occupancy of up to 1,000 channels, in order.
    ///
    /// # Errors
    /// The service's error after retries.
    pub async fn batch_get(&self, channels: &[String]) -> Result<Vec<proto::ChannelDetails>, Error> {
        let req = proto::BatchGetOccupancyRequest {
            channels: channels.to_vec(),
        };
        self.call(|ch| {
            let req = req.clone();
            async move {
                Ok(OccupancyServiceClient::new(ch)
                    .batch_get_occupancy(req)
                    .await?
                    .into_inner()
                    .channels)
            }
        })
        .await
    }

    /// App-wide totals: active channels, connections, presence members and
    /// open sessions.
    ///
    /// # Errors
    /// The service's error after retries.
    pub async fn stats(&self) -> Result<proto::AppStats, Error> {
        self.call(|ch| async move {
            Ok(OccupancyServiceClient::new(ch)
                .get_stats(proto::GetStatsRequest {})
                .await?
                .into_inner()
                .stats
                .unwrap_or_default())
        })
        .await
    }

    /// One page of active channels.
    ///
    /// # Errors
    /// The service's error after retries.
    pub async fn list_page(&self, req: proto::ListChannelsRequest) -> Result<proto::ListChannelsResponse, Error> {
        self.call(|ch| {
            let req = req.clone();
            async move { Ok(OccupancyServiceClient::new(ch).list_channels(req).await?.into_inner()) }
        })
        .await
    }

    /// Every active channel under `prefix`, walking all pages.
    ///
    /// # Errors
    /// The service's error after retries.
    pub async fn list_all(&self, prefix: &str, by_value: bool) -> Result<Vec<proto::ChannelDetails>, Error> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = self
                .list_page(proto::ListChannelsRequest {
                    prefix: prefix.to_string(),
                    limit: 1000,
                    cursor: cursor.clone(),
                    by: if by_value {
                        proto::ListBy::Value
                    } else {
                        proto::ListBy::Id
                    } as i32,
                    order: proto::ListOrder::Name as i32,
                })
                .await?;
            out.extend(page.channels);
            if page.next_cursor.is_empty() {
                return Ok(out);
            }
            cursor = page.next_cursor;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_as_people_write_them() {
        assert_eq!(endpoint_url("127.0.0.1:50051").unwrap(), "http://127.0.0.1:50051");
        assert_eq!(endpoint_url(" localhost:50051 ").unwrap(), "http://localhost:50051");
        assert_eq!(endpoint_url("[::1]:50051").unwrap(), "http://[::1]:50051");
        assert_eq!(
            endpoint_url("http://127.0.0.1:50051").unwrap(),
            "http://127.0.0.1:50051"
        );
        assert_eq!(
            endpoint_url("https://occupancy.example").unwrap(),
            "https://occupancy.example"
        );
        for (bad, why) in [
            ("", "empty"),
            ("localhost", "no port"),
            ("redis://x:1", "unsupported scheme"),
            ("not a url", "not a HOST:PORT"),
            ("http://", "HOST:PORT"),
        ] {
            let e = endpoint_url(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(e.starts_with("invalid endpoint"), "{e}");
        }
        assert!(Client::new("localhost").is_err());
        assert!(Client::builder().connect().is_err());
    }
}
