//! `OccupancyService`: the read side.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::auth::principal;
use super::convert;
use crate::auth::{Op, Principal};
use crate::domain::list::{encode_cursor, MAX_LIMIT};
use crate::domain::{ChannelName, ListOrder, ListPage, ListQuery};
use crate::error::Error;
use crate::fanout::subscription::{self, Item};
use crate::fanout::wire::SubscribeOccupancyResponse;
use crate::fanout::Hub;
use crate::proto::v1 as pb;
use crate::store::Store;

/// gRPC adapter of the read side.
pub struct OccupancyApi {
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    cancel: CancellationToken,
    heartbeat: std::time::Duration,
}

impl OccupancyApi {
    /// The service over `store`, streaming from `hub`; open streams end
    /// with UNAVAILABLE when `cancel` fires, and get a heartbeat when quiet
    /// for `heartbeat`.
    pub fn new(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        cancel: CancellationToken,
        heartbeat: std::time::Duration,
    ) -> Self {
        Self {
            store,
            hub,
            cancel,
            heartbeat,
        }
    }
}

#[tonic::async_trait]
impl pb::occupancy_service_server::OccupancyService for OccupancyApi {
    type SubscribeOccupancyStream = Pin<Box<dyn Stream<Item = Result<SubscribeOccupancyResponse, Status>> + Send>>;

    #[instrument(level = "debug", skip_all, fields(channels = req.get_ref().channels.len(), prefix = %req.get_ref().prefix))]
    async fn subscribe_occupancy(
        &self,
        req: Request<pb::SubscribeOccupancyRequest>,
    ) -> Result<Response<Self::SubscribeOccupancyStream>, Status> {
        let who = principal(&req)?;
        let spec = convert::subscription(req.into_inner(), self.store.shards()).map_err(Error::from)?;
        for c in &spec.channels {
            who.check(Op::Subscribe, c.as_str()).map_err(Error::from)?;
        }
        if let Some(prefix) = &spec.prefix {
            who.check_prefix(Op::Subscribe, prefix).map_err(Error::from)?;
        }
        tracing::info!(
            channels = spec.channels.len(),
            prefix = spec.prefix.as_deref().unwrap_or(""),
            all_channels = spec.prefix.as_deref() == Some(""),
            resume = spec.resume.is_some(),
            "subscription opened"
        );
        let events = subscription::stream(self.store.clone(), self.hub.clone(), spec, self.heartbeat);
        // on shutdown, stop at once (even with events still queued) and end
        // with UNAVAILABLE so the client reconnects elsewhere
        let cancel = self.cancel.clone();
        let items = events.take_until(cancel.clone().cancelled_owned());
        let tail = futures::stream::once(async move { cancel.is_cancelled() })
            .filter_map(|cancelled| async move { cancelled.then_some(Err(Error::ShuttingDown)) });
        let stream = items.chain(tail);
        let stream: Pin<Box<dyn Stream<Item = Item> + Send>> = match who.expires_at() {
            None => Box::pin(stream),
            Some(exp) => Box::pin(until_expiry(stream, exp)),
        };
        Ok(Response::new(Box::pin(stream.map(|item| item.map_err(Status::from)))))
    }

    #[instrument(level = "debug", skip_all, fields(channel = %req.get_ref().channel))]
    async fn get_occupancy(
        &self,
        req: Request<pb::GetOccupancyRequest>,
    ) -> Result<Response<pb::GetOccupancyResponse>, Status> {
        let who = principal(&req)?;
        let channel = ChannelName::parse("channel", req.into_inner().channel).map_err(Error::from)?;
        who.check(Op::Read, channel.as_str()).map_err(Error::from)?;
        let m = self.store.get(std::slice::from_ref(&channel)).await?;
        let m = m.into_iter().next().unwrap_or_default();
        Ok(Response::new(pb::GetOccupancyResponse {
            channel: Some(convert::details(channel.into_string(), Some(m))),
        }))
    }

    #[instrument(level = "debug", skip_all, fields(channels = req.get_ref().channels.len()))]
    async fn batch_get_occupancy(
        &self,
        req: Request<pb::BatchGetOccupancyRequest>,
    ) -> Result<Response<pb::BatchGetOccupancyResponse>, Status> {
        let who = principal(&req)?;
        let channels = convert::batch_channels(req.into_inner().channels).map_err(Error::from)?;
        // one forbidden channel refuses the whole request, naming it
        for c in &channels {
            who.check(Op::Read, c.as_str()).map_err(Error::from)?;
        }
        let metrics = self.store.get(&channels).await?;
        Ok(Response::new(pb::BatchGetOccupancyResponse {
            channels: channels
                .into_iter()
                .zip(metrics)
                .map(|(c, m)| convert::details(c.into_string(), Some(m)))
                .collect(),
        }))
    }

    #[instrument(level = "debug", skip_all)]
    async fn get_stats(&self, req: Request<pb::GetStatsRequest>) -> Result<Response<pb::GetStatsResponse>, Status> {
        // totals span every channel: only a credential that may read every
        // channel sees them
        principal(&req)?.check_prefix(Op::Read, "").map_err(Error::from)?;
        let t = self.store.stats().await?;
        Ok(Response::new(pb::GetStatsResponse { stats: Some(t.into()) }))
    }

    #[instrument(level = "debug", skip_all, fields(prefix = %req.get_ref().prefix))]
    async fn list_channels(
        &self,
        req: Request<pb::ListChannelsRequest>,
    ) -> Result<Response<pb::ListChannelsResponse>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        let order = convert::list_order(r.order).map_err(Error::from)?;
        let by_value = convert::list_by_value(r.by).map_err(Error::from)?;
        let q = ListQuery::new(r.prefix, r.limit, &r.cursor, order, by_value).map_err(Error::from)?;
        let page = list_for(self.store.as_ref(), &who, q).await?;
        Ok(Response::new(pb::ListChannelsResponse {
            channels: page
                .channels
                .into_iter()
                .map(|c| convert::details(c.name.into_string(), c.metrics))
                .collect(),
            next_cursor: page.next_cursor.unwrap_or_default(),
        }))
    }
}

/// Ends `stream` with UNAUTHENTICATED when the token it was opened with
/// expires (`exp`, Unix seconds); the client subscribes again with a fresh
/// token and `resume_from` set to the last event id, and misses nothing.
pub(crate) fn until_expiry(
    stream: impl Stream<Item = Item> + Send + 'static,
    exp: u64,
) -> impl Stream<Item = Item> + Send + 'static {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let left = std::time::Duration::from_secs(exp).saturating_sub(now);
    let deadline = tokio::time::Instant::now() + left;
    let expired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = expired.clone();
    let items = stream.take_until(async move {
        tokio::time::sleep_until(deadline).await;
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let tail = futures::stream::once(async move { expired.load(std::sync::atomic::Ordering::Relaxed) })
        .filter_map(|expired| async move { expired.then_some(Err(Error::StreamExpired)) });
    items.chain(tail)
}

/// One page of the walk `q` holding only channels `who` may read. Pages
/// keep the walk's guarantees: no channel twice, in walk order, and a page
/// is empty only when it is the last. Where `who` may read everything
/// under the prefix this is the store's own page.
///
/// # Errors
/// PERMISSION_DENIED for a credential that may read no channel at all;
/// the store's.
pub(crate) async fn list_for(store: &dyn Store, who: &Principal, q: ListQuery) -> Result<ListPage, Error> {
    // a credential that may read nothing is refused outright
    who.check_any(Op::Read)?;
    if who.covers(Op::Read, &q.prefix) {
        return store.list(&q).await;
    }
    if !who.meets(Op::Read, &q.prefix) {
        return Ok(ListPage::default());
    }
    let want = q.limit as usize;
    let mut out = Vec::with_capacity(want);
    let mut inner = q.clone();
    loop {
        // By name, a page can be cut after any channel (its cursor is the
        // name); busiest first, a cursor needs the index key, so only the
        // store's own cursors are used and pages hold what is still wanted.
        inner.limit = match q.order {
            ListOrder::Name => MAX_LIMIT,
            ListOrder::ConnectionsDesc => u32::try_from(want - out.len()).unwrap_or(MAX_LIMIT),
        };
        let page = store.list(&inner).await?;
        let mut rest = page.channels.into_iter();
        for c in rest.by_ref() {
            if who.may(Op::Read, c.name.as_str()) {
                out.push(c);
                if out.len() == want {
                    break;
                }
            }
        }
        let Some(next) = page.next_cursor else {
            // the walk's end: more only if an unread rest of this page holds one
            let more = rest.any(|c| who.may(Op::Read, c.name.as_str()));
            let cursor = more.then(|| name_cursor(&out));
            return Ok(ListPage {
                channels: out,
                next_cursor: cursor.flatten(),
            });
        };
        if out.len() < want {
            inner = ListQuery::new(q.prefix.clone(), q.limit, &next, q.order, q.with_metrics)?;
            continue;
        }
        // full: say there is more only when another readable channel
        // follows, so the next page is never empty
        let rest: Vec<_> = rest.collect();
        let cut_inside = !rest.is_empty();
        let more = rest.iter().any(|c| who.may(Op::Read, c.name.as_str())) || {
            let mut peek = ListQuery::new(q.prefix.clone(), MAX_LIMIT, &next, q.order, false)?;
            loop {
                let p = store.list(&peek).await?;
                if p.channels.iter().any(|c| who.may(Op::Read, c.name.as_str())) {
                    break true;
                }
                match p.next_cursor {
                    Some(c) => peek = ListQuery::new(q.prefix.clone(), MAX_LIMIT, &c, q.order, false)?,
                    None => break false,
                }
            }
        };
        let cursor = if !more {
            None
        } else if cut_inside {
            name_cursor(&out)
        } else {
            Some(next)
        };
        return Ok(ListPage {
            channels: out,
            next_cursor: cursor,
        });
    }
}

/// The cursor after the last channel of a name-order page.
fn name_cursor(out: &[crate::domain::ListedChannel]) -> Option<String> {
    out.last().map(|c| encode_cursor(ListOrder::Name, c.name.as_str()))
}
