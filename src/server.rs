//! Assembles the gRPC server (services, health, reflection), the HTTP side
//! when configured, background tasks (lease reaper, health probe), metrics
//! and graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

use crate::api::{ConnectionApi, IntegrationApi, OccupancyApi};
use crate::config::{defaults, Config, StoreConfig};
use crate::domain::limits::{MAX_REAP_ROUNDS_PER_TICK, MAX_REQUEST_BYTES};
use crate::error::{Error, Result};
use crate::proto::v1 as pb;
use crate::store::{MemoryStore, Store};
use crate::telemetry::{GrpcMetricsLayer, Telemetry};

/// Builds the configured store.
///
/// # Errors
/// [`Error::InvalidInput`] for a malformed Redis URL or key prefix.
pub fn build_store(config: &Config) -> Result<Arc<dyn Store>> {
    Ok(match &config.store {
        StoreConfig::Memory => Arc::new(MemoryStore::new(config.session_ttl)),
        StoreConfig::Redis(r) => crate::store::redis::open(r.clone())?,
    })
}

/// Serves the occupancy API on `listener` (and the HTTP side on
/// `config.http_listen`, when set) until `shutdown` completes, then drains
/// open calls for at most the configured grace period: the binary's entry
/// point, which builds the store and the event hub from `config` and
/// hands over to [`run_with_http`].
///
/// # Errors
/// A bad store configuration, an HTTP address that cannot be bound, or a
/// transport failure.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let store = build_store(&config)?;
    let hub = crate::fanout::Hub::new(store.shards());
    let http = match config.http_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Internal(format!("cannot listen on --http-listen {addr}: {e}")))?,
        ),
        None => None,
    };
    run_with_http(listener, http, config, store, hub, shutdown).await
}

/// The server itself, every part given: the gRPC listener, the HTTP side's
/// listener (if any; `config.http_listen` is not read), the store and the
/// event hub. Tests call it directly to bind port 0 and look at the hub's
/// queues; [`run`] builds the parts from the configuration.
///
/// # Errors
/// A transport failure.
pub async fn run_with_http(
    listener: TcpListener,
    http: Option<TcpListener>,
    config: Config,
    store: Arc<dyn Store>,
    hub: Arc<crate::fanout::Hub>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener.local_addr().map_err(|e| Error::Internal(e.to_string()))?;
    let cancel = CancellationToken::new();
    let telemetry = Arc::new(Telemetry::new());
    let (health, health_service) = tonic_health::server::health_reporter();
    set_serving(&health, &telemetry, store.ping().await.is_ok()).await;

    let sender = crate::integrations::sender::Sender::new()?;
    // integrations run wherever the store keeps them; the feed then hands
    // every change to their source as well as to the hub
    let mut delivery_task = None;
    let integrations = match store.integrations() {
        Some(rules) => {
            let (i, task) = crate::integrations::Integrations::start(
                rules,
                Some(hub.clone()),
                store.shards(),
                sender.clone(),
                config.webhook_delivery,
                &cancel,
            );
            delivery_task = task;
            store.feed(
                Arc::new(crate::integrations::Tee {
                    hub: hub.clone(),
                    source: i.source.clone(),
                }),
                cancel.clone(),
            );
            Some(i)
        }
        None => {
            store.feed(hub.clone(), cancel.clone());
            None
        }
    };

    let auth = config
        .auth
        .clone()
        .unwrap_or_else(|| Arc::new(crate::auth::Authenticator::open()));
    let tls = match &config.tls {
        None => None,
        Some(t) => Some(crate::tls::ReloadingAcceptor::new(t).map_err(Error::Internal)?),
    };

    let mut tasks = vec![
        tokio::spawn(reaper(
            store.clone(),
            telemetry.clone(),
            config.reap_interval,
            cancel.clone(),
        )),
        tokio::spawn(health_probe(
            store.clone(),
            health.clone(),
            telemetry.clone(),
            config.health_interval,
            cancel.clone(),
        )),
        tokio::spawn(crate::auth::reload::watch(auth.clone(), cancel.clone())),
    ];
    if let Some(tls) = &tls {
        tasks.push(tokio::spawn(tls.clone().watch(cancel.clone())));
    }
    tasks.extend(delivery_task);
    if !auth.enabled() {
        warn!("no --auth-keys: every caller may read and change every channel");
    }
    let authenticate = crate::api::auth::Authenticate(auth.clone());
    let http_task = if let Some(http) = http {
        let http_addr = http.local_addr().map_err(|e| Error::Internal(e.to_string()))?;
        info!(http = %http_addr, "HTTP side listening");
        let state = crate::http::HttpState {
            store: store.clone(),
            hub: hub.clone(),
            cancel: cancel.clone(),
            telemetry: telemetry.clone(),
            heartbeat: config.stream_heartbeat,
            auth: auth.clone(),
        };
        Some(tokio::spawn(async move {
            if let Err(e) = crate::http::serve(http, state).await {
                warn!(cause = %e, "HTTP side stopped");
            }
        }))
    } else {
        None
    };

    // Both reflection versions: v1 for current tools, v1alpha for the
    // many grpcurl and IDE builds that still ask only for it.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;

    let signal = {
        let cancel = cancel.clone();
        let health = health.clone();
        let telemetry = telemetry.clone();
        async move {
            shutdown.await;
            info!("shutting down");
            set_serving(&health, &telemetry, false).await;
            cancel.cancel();
        }
    };

    // everything an operator needs to know which replica this is, once
    let version = env!("CARGO_PKG_VERSION");
    let tls_on = tls.is_some();
    let auth_on = auth.enabled();
    match &config.store {
        StoreConfig::Memory => info!(
            %addr,
            %version,
            tls = tls_on,
            auth = auth_on,
            store = %"memory",
            event_shards = store.shards(),
            session_ttl = ?config.session_ttl,
            "serving"
        ),
        StoreConfig::Redis(r) => info!(
            %addr,
            %version,
            tls = tls_on,
            auth = auth_on,
            store = %"redis",
            redis = %crate::store::redis::seed_urls(&r.url, r.cluster)
                .into_iter()
                .map(redacted)
                .collect::<Vec<_>>()
                .join(","),
            cluster = r.cluster,
            replica_acks = r.replica_acks,
            key_prefix = %r.key_prefix,
            partitions = r.partitions.max(1),
            event_shards = store.shards(),
            stream_max_len = r.stream_max_len,
            session_ttl = ?config.session_ttl,
            "serving"
        ),
    }
    let router = Server::builder()
        .http2_keepalive_interval(Some(defaults::HTTP2_KEEPALIVE))
        .layer(GrpcMetricsLayer::new(telemetry.clone()))
        .layer(tower::util::MapResponseLayer::new(crate::error::name_over_limit))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        // health and reflection above stay open; the occupancy and
        // integration services authenticate every call first
        .add_service(InterceptedService::new(
            pb::occupancy_service_server::OccupancyServiceServer::new(OccupancyApi::new(
                store.clone(),
                hub.clone(),
                cancel.clone(),
                config.stream_heartbeat,
            ))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
            authenticate.clone(),
        ))
        .add_service(InterceptedService::new(
            pb::connection_service_server::ConnectionServiceServer::new(ConnectionApi::new(store.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
            authenticate.clone(),
        ))
        .add_service(InterceptedService::new(
            pb::integration_service_server::IntegrationServiceServer::new(IntegrationApi::new(
                store.integrations(),
                sender,
                integrations,
            ))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
            authenticate,
        ));
    let server: std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match tls {
        Some(tls) => Box::pin(router.serve_with_incoming_shutdown(tls.incoming(listener, cancel.clone()), signal)),
        None => {
            // `Server::tcp_nodelay` only applies to listeners tonic binds
            // itself; accepted streams of our own listener get it from
            // `TcpIncoming`. Without it a response written in two segments
            // waits for the client's delayed ACK (~40 ms per call once a
            // request spans more than one segment).
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
        }
    };
    tokio::pin!(server);
    let grace = config.shutdown_grace;
    let result = tokio::select! {
        r = &mut server => r.map_err(|e| Error::Internal(format!("transport: {e}"))),
        () = async { cancel.cancelled().await; tokio::time::sleep(grace).await } => {
            warn!(?grace, "grace period over, closing remaining calls");
            Ok(())
        }
    };
    cancel.cancel();
    if let Some(mut t) = http_task {
        // event streams ended on cancel; other requests get the grace period
        if tokio::time::timeout(grace, &mut t).await.is_err() {
            warn!("HTTP requests still open after the grace period, closing them");
            t.abort();
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    info!("stopped");
    result
}

/// `url` without its password, for logs.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

async fn set_serving(health: &HealthReporter, telemetry: &Telemetry, serving: bool) {
    telemetry.set_serving(serving);
    use pb::connection_service_server::ConnectionServiceServer as C;
    use pb::integration_service_server::IntegrationServiceServer as I;
    use pb::occupancy_service_server::OccupancyServiceServer as O;
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    health.set_service_status("", status).await;
    health
        .set_service_status(<O<OccupancyApi> as tonic::server::NamedService>::NAME, status)
        .await;
    health
        .set_service_status(<C<ConnectionApi> as tonic::server::NamedService>::NAME, status)
        .await;
    health
        .set_service_status(<I<IntegrationApi> as tonic::server::NamedService>::NAME, status)
        .await;
}

/// A ticker that skips ticks it missed rather than bursting.
fn ticks(every: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Waits for the next tick; false once `cancel` fires.
async fn next_tick(tick: &mut tokio::time::Interval, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        _ = tick.tick() => true,
    }
}

/// Runs lease expiry rounds until cancelled. Every replica runs one; the
/// store makes concurrent rounds safe.
async fn reaper(store: Arc<dyn Store>, telemetry: Arc<Telemetry>, every: Duration, cancel: CancellationToken) {
    // a failing store fails every round (4 a second by default): log the
    // outage once, sum it up now and then, and log its end
    let outage = crate::store::outage::OutageLog::new("session reaper");
    let mut tick = ticks(every);
    while next_tick(&mut tick, &cancel).await {
        // keep going while work remains, a bounded number of rounds per tick
        for _ in 0..MAX_REAP_ROUNDS_PER_TICK {
            match store.reap().await {
                Ok(r) => {
                    telemetry.reaped(r.sessions_expired, r.connections_removed);
                    outage.recovered(0);
                    if r.sessions_expired > 0 {
                        info!(
                            sessions = r.sessions_expired,
                            connections = r.connections_removed,
                            "expired sessions"
                        );
                    }
                    if !r.more || cancel.is_cancelled() {
                        break;
                    }
                }
                Err(e) => {
                    telemetry.reap_failed();
                    outage.failed(0, &e);
                    break;
                }
            }
        }
    }
}

/// Keeps the health service's status in line with the store's.
async fn health_probe(
    store: Arc<dyn Store>,
    health: HealthReporter,
    telemetry: Arc<Telemetry>,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut serving = None;
    let mut tick = ticks(every);
    while next_tick(&mut tick, &cancel).await {
        let checked = store.ping().await;
        let ok = checked.is_ok();
        if serving != Some(ok) {
            match checked {
                Ok(()) => info!("store ready: SERVING"),
                Err(e) => warn!(cause = %e, "store not ready: NOT_SERVING"),
            }
            set_serving(&health, &telemetry, ok).await;
            serving = Some(ok);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_not_logged() {
        assert_eq!(super::redacted("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
        assert_eq!(
            super::redacted("rediss://app:s3cret@r:6380/0"),
            "rediss://app:***@r:6380/0"
        );
        assert_eq!(super::redacted("redis://:s3cret@r/"), "redis://:***@r/");
    }
}
