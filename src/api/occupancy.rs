//! `OccupancyService`: the read side.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::convert;
use crate::domain::{ChannelName, ListQuery};
use crate::error::Error;
use crate::fanout::subscription::{self, Item};
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
    type SubscribeOccupancyStream = Pin<Box<dyn Stream<Item = Item> + Send + 'static>>;

    #[instrument(level = "debug", skip_all, fields(channels = req.get_ref().channels.len(), prefix = %req.get_ref().prefix))]
    async fn subscribe_occupancy(
        &self,
        req: Request<pb::SubscribeOccupancyRequest>,
    ) -> Result<Response<Self::SubscribeOccupancyStream>, Status> {
        let spec = convert::subscription(req.into_inner(), self.store.shards()).map_err(Error::from)?;
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
        let tail = futures::stream::once(async move { cancel.is_cancelled() }).filter_map(|cancelled| async move {
            cancelled.then(|| Err(Status::unavailable("server shutting down; reconnect with resume_from")))
        });
        let stream = items.chain(tail);
        Ok(Response::new(Box::pin(stream)))
    }

    #[instrument(level = "debug", skip_all, fields(channel = %req.get_ref().channel))]
    async fn get_occupancy(
        &self,
        req: Request<pb::GetOccupancyRequest>,
    ) -> Result<Response<pb::GetOccupancyResponse>, Status> {
        let channel = ChannelName::parse("channel", req.into_inner().channel).map_err(Error::from)?;
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
        let channels = convert::batch_channels(req.into_inner().channels).map_err(Error::from)?;
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
    async fn get_stats(&self, _req: Request<pb::GetStatsRequest>) -> Result<Response<pb::GetStatsResponse>, Status> {
        let t = self.store.stats().await?;
        Ok(Response::new(pb::GetStatsResponse {
            stats: Some(convert::stats(t)),
        }))
    }

    #[instrument(level = "debug", skip_all, fields(prefix = %req.get_ref().prefix))]
    async fn list_channels(
        &self,
        req: Request<pb::ListChannelsRequest>,
    ) -> Result<Response<pb::ListChannelsResponse>, Status> {
        let r = req.into_inner();
        let order = convert::list_order(r.order).map_err(Error::from)?;
        let by_value = convert::list_by_value(r.by).map_err(Error::from)?;
        let q = ListQuery::new(r.prefix, r.limit, &r.cursor, order, by_value).map_err(Error::from)?;
        let page = self.store.list(&q).await?;
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
