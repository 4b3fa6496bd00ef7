//! The HTTP side (axum), on the same store and event hub as gRPC: Ably's
//! REST shapes (`rest.rs`), live occupancy over server-sent events
//! (`sse.rs`), app-wide totals, Prometheus metrics, the OpenAPI document
//! and the dashboard page.
//!
//! Handlers are adapters, as on the gRPC side: they validate with the same
//! functions (`api::convert`, `domain`), call the store or the hub, and
//! convert the answer to JSON (`json.rs`). HTTP statuses are chosen in one
//! place, [`Error::codes`] in `error.rs`, beside the gRPC codes of the same
//! failures.
//!
//! Access control is gRPC's: with a key file, every route that serves
//! occupancy (`/channels...`, `/occupancy/stream`, `/stats`, `/metrics`)
//! authenticates the `Authorization: Bearer KEY_ID:SECRET` (or `Bearer
//! TOKEN`) header with the same [`Authenticator`] and checks the same
//! capabilities (401 unknown caller, 403 not allowed); `/health`, `/`
//! (the page, not its data) and `/openapi.json` stay open.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, Authenticator, Op, Principal};
use crate::error::{health_status, Error};
use crate::fanout::Hub;
use crate::store::Store;
use crate::telemetry::Telemetry;

pub mod json;
mod rest;
mod sse;

/// The OpenAPI document of this API, kept in the repository and served at
/// `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");
/// The dashboard page served at `/` (one file: markup, style and script,
/// no external assets).
pub const DASHBOARD: &str = include_str!("dashboard.html");

/// What every handler shares.
#[derive(Clone)]
pub struct HttpState {
    /// The store, as gRPC's.
    pub store: Arc<dyn Store>,
    /// The replica's event hub, as gRPC's.
    pub hub: Arc<Hub>,
    /// Fires on shutdown: event streams end.
    pub cancel: CancellationToken,
    /// Metrics.
    pub telemetry: Arc<Telemetry>,
    /// Quiet time after which an event stream gets a heartbeat comment
    /// (`--stream-heartbeat`, as gRPC streams).
    pub heartbeat: std::time::Duration,
    /// Access control, the gRPC side's ([`Authenticator::open`] when off).
    pub auth: Arc<Authenticator>,
}

/// The caller of an HTTP request: its `Authorization` header
/// authenticated as gRPC's `authorization` metadata is.
///
/// # Errors
/// [`Error::Auth`] (401) for a missing or bad credential while keys are
/// configured.
pub(crate) fn principal(state: &HttpState, headers: &HeaderMap) -> Result<Principal, Error> {
    let header = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| AuthError::Malformed("the authorization value is not visible ASCII".into()))?,
        ),
    };
    Ok(state.auth.authenticate(header)?)
}

/// The routes of the HTTP side.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/channels", get(rest::list))
        .route("/channels/{channel_id}", get(rest::get_channel).post(rest::batch))
        .route("/channels/{channel_id}/occupancy/stream", get(sse::channel_stream))
        .route("/occupancy/stream", get(sse::stream))
        .route("/stats", get(rest::stats))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .with_state(state)
}

/// Serves the HTTP side on `listener` until `cancel` fires, then waits for
/// open requests (event streams end at once on `cancel`).
///
/// # Errors
/// A failure of the listener.
pub async fn serve(listener: TcpListener, state: HttpState) -> crate::Result<()> {
    let cancel = state.cancel.clone();
    axum::serve(listener, router(state))
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
        .map_err(|e| Error::Internal(format!("http listener: {e}")))
}

/// Counts and times every request by method, route pattern and status.
async fn record(State(state): State<HttpState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let res = next.run(req).await;
    state
        .telemetry
        .http_request(method.as_str(), &route, res.status().as_u16(), start.elapsed());
    res
}

async fn not_found() -> Response {
    Error::NotFound("no such route; see /openapi.json".into()).into_response()
}

async fn method_not_allowed() -> Response {
    Error::MethodNotAllowed("method not allowed on this route; see /openapi.json".into()).into_response()
}

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DASHBOARD,
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The replica's health, as the gRPC health service reports it.
async fn health(State(state): State<HttpState>) -> Response {
    let serving = state.telemetry.serving();
    let status = if serving { "SERVING" } else { "NOT_SERVING" };
    (
        health_status(serving),
        axum::Json(serde_json::json!({ "status": status })),
    )
        .into_response()
}

async fn metrics(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    // the totals span every channel: as for /stats and GetStats
    if let Err(e) = principal(&state, &headers).and_then(|p| Ok(p.check_prefix(Op::Read, "")?)) {
        return e.into_response();
    }
    let totals = match state.store.stats().await {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(cause = %e, "metrics scrape could not read the totals");
            None
        }
    };
    let hub = &state.hub;
    let text = state
        .telemetry
        .encode((hub.subscriptions(), hub.pending(), hub.published()), totals);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
