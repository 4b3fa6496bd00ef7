//! `OccupancyService`: the read side.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::convert;
use crate::domain::list::MAX_BATCH_GET;
use crate::domain::{ChannelName, InvalidInput, ListQuery};
use crate::error::Error;
use crate::proto::v1 as pb;
use crate::store::Store;

/// gRPC adapter of the read side.
pub struct OccupancyApi {
    store: Arc<dyn Store>,
}

impl OccupancyApi {
    /// The service over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl pb::occupancy_service_server::OccupancyService for OccupancyApi {
    #[instrument(skip_all, fields(channel = %req.get_ref().channel))]
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

    #[instrument(skip_all, fields(channels = req.get_ref().channels.len()))]
    async fn batch_get_occupancy(
        &self,
        req: Request<pb::BatchGetOccupancyRequest>,
    ) -> Result<Response<pb::BatchGetOccupancyResponse>, Status> {
        let names = req.into_inner().channels;
        if names.is_empty() || names.len() > MAX_BATCH_GET {
            return Err(Error::from(InvalidInput::new(
                "channels",
                format!("must hold 1 to {MAX_BATCH_GET} channels, got {}", names.len()),
            ))
            .into());
        }
        let channels = names
            .into_iter()
            .enumerate()
            .map(|(i, n)| ChannelName::parse(&format!("channels[{i}]"), n))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Error::from)?;
        let metrics = self.store.get(&channels).await?;
        Ok(Response::new(pb::BatchGetOccupancyResponse {
            channels: channels
                .into_iter()
                .zip(metrics)
                .map(|(c, m)| convert::details(c.into_string(), Some(m)))
                .collect(),
        }))
    }

    #[instrument(skip_all, fields(prefix = %req.get_ref().prefix))]
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
