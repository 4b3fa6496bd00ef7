//! REST handlers in Ably's shapes: a channel, a page of channels, a batch
//! read, and the app-wide totals.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::json::{ChannelDetailsJson, ChannelListEnvelopeJson, ChannelPageJson, StatsJson};
use super::{principal, HttpState};
use crate::api::convert;
use crate::auth::Op;
use crate::domain::limits::MAX_LIMIT;
use crate::domain::{ChannelName, InvalidInput, ListOrder, ListQuery};
use crate::error::{Error, Result};

/// The query parameters of a request, each given at most once and each
/// one of `allowed`.
pub(super) fn query_params(raw: Option<&str>, allowed: &[&str]) -> Result<Vec<(String, String)>, InvalidInput> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|_| InvalidInput::new("query", "is not a valid query string"))?;
    for (i, (k, _)) in pairs.iter().enumerate() {
        if !allowed.contains(&k.as_str()) {
            return Err(InvalidInput::new(
                k.clone(),
                format!("unknown parameter (known: {})", allowed.join(", ")),
            ));
        }
        if pairs[..i].iter().any(|(o, _)| o == k) {
            return Err(InvalidInput::new(k.clone(), "given more than once"));
        }
    }
    Ok(pairs)
}

pub(super) fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The channel name of a `{channelId}` path segment.
pub(super) fn channel_id(path: Result<Path<String>, PathRejection>) -> Result<ChannelName, InvalidInput> {
    let Path(name) = path.map_err(|_| InvalidInput::new("channelId", "is not valid percent-encoded UTF-8"))?;
    ChannelName::parse("channelId", name)
}

/// `GET /channels/{channelId}`: Ably's `ChannelDetails`.
pub(super) async fn get_channel(
    State(state): State<HttpState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Json<ChannelDetailsJson>> {
    let who = principal(&state, &headers)?;
    query_params(raw.as_deref(), &[])?;
    let channel = channel_id(path)?;
    who.check(Op::Read, channel.as_str())?;
    let m = state.store.get(std::slice::from_ref(&channel)).await?;
    let m = m.into_iter().next().unwrap_or_default();
    Ok(Json(ChannelDetailsJson::new(channel.into_string(), m)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    channels: Vec<String>,
}

/// `POST /channels/batch` with `{"channels": [...]}`: `ChannelDetails` of
/// up to [`MAX_BATCH_GET`](crate::domain::limits::MAX_BATCH_GET) channels, in request order. (A GET of `/channels/batch`
/// reads the channel named `batch`.)
pub(super) async fn batch(
    State(state): State<HttpState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Json<Vec<ChannelDetailsJson>>> {
    let who = principal(&state, &headers)?;
    match path {
        Ok(Path(p)) if p == "batch" => {}
        _ => return Err(Error::NotFound("POST is served at /channels/batch only".into())),
    }
    let body: BatchBody = serde_json::from_slice(&body).map_err(|e| {
        InvalidInput::new(
            "body",
            format!("must be a JSON object {{\"channels\": [names...]}}: {e}"),
        )
    })?;
    let channels = convert::batch_channels(body.channels)?;
    // one forbidden channel refuses the whole request, naming it
    for c in &channels {
        who.check(Op::Read, c.as_str())?;
    }
    let metrics = state.store.get(&channels).await?;
    Ok(Json(
        channels
            .into_iter()
            .zip(metrics)
            .map(|(c, m)| ChannelDetailsJson::new(c.into_string(), m))
            .collect(),
    ))
}

/// `GET /channels?prefix=&limit=&by=id|value&order=name|connections&cursor=&envelope=json`:
/// a page of active channels, as Ably's REST: a JSON array of names
/// (`by=id`) or of `ChannelDetails` (`by=value`, the default), with the
/// next page in a `Link: <...>; rel="next"` header; with `envelope=json`
/// the page and its next cursor in the body instead
/// ([`ChannelListEnvelopeJson`]), the header still sent.
pub(super) async fn list(
    State(state): State<HttpState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let who = principal(&state, &headers)?;
    let params = query_params(
        raw.as_deref(),
        &["prefix", "limit", "by", "order", "cursor", "envelope"],
    )?;
    let limit = match param(&params, "limit") {
        None => 0,
        Some(v) => match v.parse::<u32>() {
            Ok(l) if (1..=MAX_LIMIT).contains(&l) => l,
            _ => {
                return Err(
                    InvalidInput::new("limit", format!("must be a number from 1 to {MAX_LIMIT}, got {v:?}")).into(),
                )
            }
        },
    };
    let by_value = match param(&params, "by") {
        None | Some("value") => true,
        Some("id") => false,
        Some(v) => return Err(InvalidInput::new("by", format!("must be id or value, got {v:?}")).into()),
    };
    let order = match param(&params, "order") {
        None | Some("name") => ListOrder::Name,
        Some("connections") => ListOrder::ConnectionsDesc,
        Some(v) => {
            return Err(InvalidInput::new("order", format!("must be name or connections, got {v:?}")).into());
        }
    };
    let enveloped = match param(&params, "envelope") {
        None => false,
        Some("json") => true,
        Some(v) => return Err(InvalidInput::new("envelope", format!("must be json, got {v:?}")).into()),
    };
    let prefix = param(&params, "prefix").unwrap_or("").to_string();
    let cursor = param(&params, "cursor").unwrap_or("");
    let q = ListQuery::new(prefix, limit, cursor, order, by_value)?;
    // only channels the caller may read, as ListChannels
    let page = crate::api::list_for(state.store.as_ref(), &who, q).await?;
    let items = if by_value {
        ChannelPageJson::Details(
            page.channels
                .into_iter()
                .map(|c| ChannelDetailsJson::new(c.name.into_string(), c.metrics.unwrap_or_default()))
                .collect(),
        )
    } else {
        ChannelPageJson::Ids(page.channels.into_iter().map(|c| c.name.into_string()).collect())
    };
    let link = match &page.next_cursor {
        None => None,
        Some(next) => {
            // the same query with the next cursor, so the link keeps the
            // caller's prefix, limit, order, format and envelope
            let mut next_params: Vec<(&str, &str)> = params
                .iter()
                .filter(|(k, _)| k != "cursor")
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            next_params.push(("cursor", next));
            let qs = serde_urlencoded::to_string(&next_params).map_err(|e| Error::Internal(format!("query: {e}")))?;
            Some(format!("</channels?{qs}>; rel=\"next\""))
        }
    };
    let mut res = if enveloped {
        Json(ChannelListEnvelopeJson {
            status_code: 200,
            response: items,
            next_cursor: page.next_cursor,
            link: link.clone(),
        })
        .into_response()
    } else {
        Json(items).into_response()
    };
    if let Some(link) = link {
        let value = header::HeaderValue::from_str(&link).map_err(|e| Error::Internal(format!("link header: {e}")))?;
        res.headers_mut().insert(header::LINK, value);
    }
    Ok(res)
}

/// `GET /stats`: the app-wide totals.
pub(super) async fn stats(
    State(state): State<HttpState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<StatsJson>> {
    // the totals span every channel, as for GetStats
    principal(&state, &headers)?.check_prefix(Op::Read, "")?;
    query_params(raw.as_deref(), &[])?;
    Ok(Json(state.store.stats().await?))
}
