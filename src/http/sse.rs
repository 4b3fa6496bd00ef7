//! Live occupancy as server-sent events: the SubscribeOccupancy machinery
//! (snapshot first, filters, debounce, resume) with each event written as
//! an SSE message whose `id` is the event id and whose data is Ably's
//! `[meta]occupancy` message. A browser's `EventSource` sends the last id
//! back as `Last-Event-ID` when it reconnects, to any replica, and gets
//! what changed meanwhile and nothing it already has.

use std::convert::Infallible;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::json::{EventDataJson, OccupancyEventJson};
use super::rest::{channel_id, param, query_params};
use super::{principal, HttpState};
use crate::api::convert;
use crate::auth::Op;
use crate::domain::InvalidInput;
use crate::domain::Metrics;
use crate::error::{Error, Result};
use crate::fanout::subscription;
use crate::proto::v1 as pb;

/// The category of a camelCase metric name (`presenceMembers`).
fn category(field: &str, name: &str) -> Result<i32, InvalidInput> {
    use pb::MetricCategory as C;
    Ok(match name {
        "connections" => C::Connections,
        "publishers" => C::Publishers,
        "subscribers" => C::Subscribers,
        "presenceConnections" => C::PresenceConnections,
        "presenceMembers" => C::PresenceMembers,
        "presenceSubscribers" => C::PresenceSubscribers,
        "objectPublishers" => C::ObjectPublishers,
        "objectSubscribers" => C::ObjectSubscribers,
        "presenceClients" => C::PresenceClients,
        _ => {
            return Err(InvalidInput::new(
                field,
                format!("unknown metric {name:?} (known: connections, publishers, subscribers, presenceConnections, presenceMembers, presenceSubscribers, objectPublishers, objectSubscribers, presenceClients)"),
            ))
        }
    } as i32)
}

fn split_list(v: Option<&str>) -> Vec<&str> {
    v.map(|v| v.split(',').filter(|s| !s.is_empty()).collect())
        .unwrap_or_default()
}

/// `GET /channels/{channelId}/occupancy/stream`.
pub(super) async fn channel_stream(
    State(state): State<HttpState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let channel = channel_id(path)?;
    open(state, vec![channel.into_string()], &headers, raw.as_deref(), false).await
}

/// `GET /occupancy/stream?channels=a,b&prefix=`.
pub(super) async fn stream(
    State(state): State<HttpState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    open(state, Vec::new(), &headers, raw.as_deref(), true).await
}

async fn open(
    state: HttpState,
    mut channels: Vec<String>,
    headers: &HeaderMap,
    raw: Option<&str>,
    by_query: bool,
) -> Result<Response> {
    let who = principal(&state, headers)?;
    let allowed: &[&str] = if by_query {
        &["channels", "prefix", "categories", "debounceMs", "lastEventId"]
    } else {
        &["categories", "debounceMs", "lastEventId"]
    };
    let params = query_params(raw, allowed)?;
    if by_query {
        channels = split_list(param(&params, "channels"))
            .into_iter()
            .map(str::to_string)
            .collect();
    }
    let categories = split_list(param(&params, "categories"))
        .into_iter()
        .enumerate()
        .map(|(i, c)| category(&format!("categories[{i}]"), c))
        .collect::<Result<Vec<_>, _>>()?;
    let debounce_ms = match param(&params, "debounceMs") {
        None => 0,
        Some(v) => v
            .parse::<u32>()
            .map_err(|_| InvalidInput::new("debounceMs", format!("must be a number of milliseconds, got {v:?}")))?,
    };
    // the header an EventSource sends on reconnecting, or the query
    // parameter for clients that cannot set headers
    let (resume_from, resume_field) = match headers.get("last-event-id") {
        Some(v) => (
            v.to_str()
                .map_err(|_| InvalidInput::new("Last-Event-ID", "is not an event id issued by this service"))?
                .to_string(),
            "Last-Event-ID",
        ),
        None => (param(&params, "lastEventId").unwrap_or("").to_string(), "lastEventId"),
    };
    // an explicit empty prefix follows every channel (the dashboard's
    // unfiltered view); SubscribeOccupancy reads an empty prefix as none,
    // so validate the rest with a stand-in and set it after
    let every_channel = by_query && channels.is_empty() && param(&params, "prefix") == Some("");
    // fields added to the request later keep their defaults here
    #[allow(clippy::needless_update)]
    let req = pb::SubscribeOccupancyRequest {
        channels,
        prefix: if every_channel {
            String::new()
        } else {
            param(&params, "prefix").unwrap_or("").to_string()
        },
        all_channels: every_channel,
        categories,
        debounce_ms,
        resume_from,
        ..Default::default()
    };
    // the same validation as SubscribeOccupancy, with the fields named as
    // this request spells them
    let spec = convert::subscription(req, state.store.shards()).map_err(|mut e| {
        e.field = match e.field.as_str() {
            "debounce_ms" => "debounceMs".to_string(),
            "resume_from" => resume_field.to_string(),
            "channels[0]" if !by_query => "channelId".to_string(),
            _ => e.field,
        };
        e
    })?;
    // the same checks as SubscribeOccupancy
    for c in &spec.channels {
        who.check(Op::Subscribe, c.as_str())?;
    }
    if let Some(prefix) = &spec.prefix {
        who.check_prefix(Op::Subscribe, prefix)?;
    }
    tracing::info!(
        channels = spec.channels.len(),
        prefix = spec.prefix.as_deref().unwrap_or(""),
        resume = spec.resume.is_some(),
        "event stream opened"
    );
    let events = subscription::stream(state.store.clone(), state.hub.clone(), spec, state.heartbeat)
        .take_until(state.cancel.clone().cancelled_owned());
    // a token's stream ends with an `error` event (UNAUTHENTICATED) when
    // it expires; the client reconnects with a fresh one and Last-Event-ID
    let events: std::pin::Pin<Box<dyn futures::Stream<Item = subscription::Item> + Send>> = match who.expires_at() {
        None => Box::pin(events),
        Some(exp) => Box::pin(crate::api::until_expiry(events, exp)),
    };
    let events = events
        .map(to_sse)
        // an error ends the stream (the client reconnects)
        .scan(false, |ended, item| {
            if *ended {
                return futures::future::ready(None);
            }
            *ended = matches!(item, SseItem::Error(_));
            futures::future::ready(Some(item))
        })
        .map(|item| {
            Ok::<_, Infallible>(match item {
                SseItem::Event(e) | SseItem::Error(e) => e,
            })
        });
    // no axum keep-alive: the subscription's own heartbeats (comments,
    // every --stream-heartbeat of quiet) keep idle streams open
    let mut res = Sse::new(events).into_response();
    // nginx and other proxies would otherwise buffer the stream
    res.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}

enum SseItem {
    Event(Event),
    Error(Event),
}

/// The `error` event that ends a stream, its code and message chosen in
/// `error.rs`.
fn error_event(e: &Error) -> SseItem {
    let (code, message) = e.stream_end();
    let data = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    SseItem::Error(Event::default().event("error").data(data))
}

fn to_sse(item: subscription::Item) -> SseItem {
    let resp = match item {
        Ok(r) => r,
        Err(e) => return error_event(&e),
    };
    // the subscription's `live` (after the snapshot or replay) and
    // heartbeat messages become SSE comments: EventSource ignores them, raw
    // clients see `: live` and `: heartbeat`, and both keep proxies from
    // cutting a quiet stream
    if resp.live.is_some() {
        return SseItem::Event(Event::default().comment("live"));
    }
    if resp.heartbeat.is_some() {
        return SseItem::Event(Event::default().comment("heartbeat"));
    }
    match resp.into_event() {
        Ok(Some(ev)) => {
            let json = OccupancyEventJson {
                id: ev.id.clone(),
                name: ev.name,
                channel: ev.channel,
                timestamp: ev.timestamp_ms,
                data: EventDataJson {
                    metrics: ev.metrics.map(Metrics::from).unwrap_or_default(),
                },
            };
            match serde_json::to_string(&json) {
                Ok(data) => SseItem::Event(Event::default().id(ev.id).data(data)),
                Err(e) => error_event(&Error::Internal(format!("event encoding failed: {e}"))),
            }
        }
        Ok(None) | Err(_) => error_event(&Error::Internal("undecodable subscription event".into())),
    }
}
