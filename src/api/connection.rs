//! `ConnectionService`: the write side, called by realtime front ends.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::auth::principal;
use super::convert;
use crate::auth::{Op, Principal};
use crate::domain::{Applied, Batch, InvalidInput, KeepAliveOutcome, Metrics, Operation, SessionId};
use crate::error::{operation_status, Error};
use crate::proto::v1 as pb;
use crate::store::Store;

/// gRPC adapter of the write side.
pub struct ConnectionApi {
    store: Arc<dyn Store>,
}

impl ConnectionApi {
    /// The service over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Applies one operation and returns the channel's metrics after it
    /// and the session's lease epoch.
    async fn one(
        &self,
        who: &Principal,
        session: &str,
        op: Result<Operation, InvalidInput>,
    ) -> Result<(Metrics, u64), Error> {
        let session = convert::session(session)?;
        let op = op?;
        who.check(Op::Report, op.channel().as_str())?;
        let (r, epoch) = self
            .store
            .apply_as(&session, who.owner(), std::slice::from_ref(&op), true)
            .await
            .map_err(|e| counted(who, e))?;
        let r = r
            .into_iter()
            .next()
            .ok_or_else(|| Error::Internal("no result".into()))?;
        match Error::refused(r.status) {
            None => Ok((r.metrics.unwrap_or_default(), epoch)),
            Some(e) => Err(e),
        }
    }
}

/// A KeepAlive refused: the session belongs to another key.
fn refused(who: &Principal, session: &SessionId) -> Status {
    counted(who, crate::store::not_owner(who.owner(), session, false)).into()
}

/// Counts and logs an ownership refusal coming back from the store.
fn counted(who: &Principal, e: Error) -> Error {
    match e {
        Error::Auth(a) => Error::Auth(who.denied(a)),
        other => other,
    }
}

fn some_metrics(m: Metrics) -> Option<pb::Metrics> {
    Some(m.into())
}

#[tonic::async_trait]
impl pb::connection_service_server::ConnectionService for ConnectionApi {
    #[instrument(level = "debug", skip_all, fields(session = %req.get_ref().session_id, channel = %req.get_ref().channel))]
    async fn attach(&self, req: Request<pb::AttachRequest>) -> Result<Response<pb::AttachResponse>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        let (m, session_epoch) = self
            .one(
                &who,
                &r.session_id,
                convert::attach(&r.connection_id, &r.channel, &r.modes),
            )
            .await?;
        Ok(Response::new(pb::AttachResponse {
            metrics: some_metrics(m),
            session_epoch,
        }))
    }

    #[instrument(level = "debug", skip_all, fields(session = %req.get_ref().session_id, channel = %req.get_ref().channel))]
    async fn detach(&self, req: Request<pb::DetachRequest>) -> Result<Response<pb::DetachResponse>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        let (m, session_epoch) = self
            .one(&who, &r.session_id, convert::detach(&r.connection_id, &r.channel))
            .await?;
        Ok(Response::new(pb::DetachResponse {
            metrics: some_metrics(m),
            session_epoch,
        }))
    }

    #[instrument(level = "debug", skip_all, fields(session = %req.get_ref().session_id, channel = %req.get_ref().channel))]
    async fn enter_presence(
        &self,
        req: Request<pb::EnterPresenceRequest>,
    ) -> Result<Response<pb::EnterPresenceResponse>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        let op = convert::presence(&r.connection_id, &r.channel, &r.client_id, false);
        let (m, session_epoch) = self.one(&who, &r.session_id, op).await?;
        Ok(Response::new(pb::EnterPresenceResponse {
            metrics: some_metrics(m),
            session_epoch,
        }))
    }

    #[instrument(level = "debug", skip_all, fields(session = %req.get_ref().session_id, channel = %req.get_ref().channel))]
    async fn leave_presence(
        &self,
        req: Request<pb::LeavePresenceRequest>,
    ) -> Result<Response<pb::LeavePresenceResponse>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        let op = convert::presence(&r.connection_id, &r.channel, &r.client_id, true);
        let (m, session_epoch) = self.one(&who, &r.session_id, op).await?;
        Ok(Response::new(pb::LeavePresenceResponse {
            metrics: some_metrics(m),
            session_epoch,
        }))
    }

    #[instrument(level = "debug", skip_all, fields(session = %req.get_ref().session_id, ops = req.get_ref().operations.len()))]
    async fn apply(&self, req: Request<pb::ApplyRequest>) -> Result<Response<pb::ApplyResponse>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        let session = convert::session(&r.session_id).map_err(Error::from)?;
        let ops = convert::operations(&r.operations).map_err(Error::from)?;
        // one forbidden operation refuses the whole batch, before the store
        for op in &ops {
            who.check(Op::Report, op.channel().as_str()).map_err(Error::from)?;
        }
        let batch = Batch {
            ops: &ops,
            include_metrics: r.include_metrics,
            sequence: r.sequence,
            epoch: r.session_epoch,
            open_epoch: 0,
            owner: who.owner(),
        };
        let (results, session_epoch) = match self.store.write(&session, batch).await? {
            Applied::Done { results, epoch } => (results, epoch),
            Applied::Stale { epoch } => {
                return Ok(Response::new(pb::ApplyResponse {
                    already_applied: true,
                    session_epoch: epoch,
                    ..Default::default()
                }))
            }
            Applied::NotOwner { connection } => {
                return Err(counted(&who, crate::store::not_owner(who.owner(), &session, connection)).into())
            }
            Applied::WrongEpoch { epoch } => {
                return Ok(Response::new(pb::ApplyResponse {
                    epoch_mismatch: true,
                    session_epoch: epoch,
                    ..Default::default()
                }))
            }
        };
        Ok(Response::new(pb::ApplyResponse {
            already_applied: false,
            epoch_mismatch: false,
            session_epoch,
            results: results
                .into_iter()
                .map(|res| pb::OperationResult {
                    status: operation_status(res.status) as i32,
                    message: res.status.message(),
                    metrics: res.metrics.map(Into::into),
                })
                .collect(),
        }))
    }

    #[instrument(level = "debug", skip_all, fields(session = %req.get_ref().session_id))]
    async fn keep_alive(&self, req: Request<pb::KeepAliveRequest>) -> Result<Response<pb::KeepAliveResponse>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        let session = convert::session(&r.session_id).map_err(Error::from)?;
        let ttl = convert::ttl(r.ttl_ms).map_err(Error::from)?;
        who.check_any(Op::Report).map_err(Error::from)?;
        let (status, ttl_ms, session_epoch) = match self.store.keep_alive_as(&session, who.owner(), ttl).await? {
            KeepAliveOutcome::Active { ttl_ms, epoch } => (pb::SessionStatus::Active, ttl_ms, epoch),
            KeepAliveOutcome::Unknown { ttl_ms, epoch } => (pb::SessionStatus::Unknown, ttl_ms, epoch),
            KeepAliveOutcome::NotOwner => return Err(refused(&who, &session)),
        };
        Ok(Response::new(pb::KeepAliveResponse {
            status: status as i32,
            ttl_ms: u32::try_from(ttl_ms).unwrap_or(u32::MAX),
            session_epoch,
        }))
    }

    #[instrument(level = "debug", skip_all, fields(session = %req.get_ref().session_id, attachments = req.get_ref().attachments.len()))]
    async fn sync_session(
        &self,
        req: Request<pb::SyncSessionRequest>,
    ) -> Result<Response<pb::SyncSessionResponse>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        let session = convert::session(&r.session_id).map_err(Error::from)?;
        let ttl = convert::ttl(r.ttl_ms).map_err(Error::from)?;
        let desired = convert::held(&r.attachments).map_err(Error::from)?;
        who.check_any(Op::Report).map_err(Error::from)?;
        for a in &desired {
            who.check(Op::Report, a.channel.as_str()).map_err(Error::from)?;
        }
        let out = self
            .store
            .sync_session_as(&session, who.owner(), &desired, ttl)
            .await
            .map_err(|e| counted(&who, e))?;
        if out.added + out.removed > 0 {
            tracing::info!(
                added = out.added,
                removed = out.removed,
                "session synced with corrections"
            );
        }
        Ok(Response::new(pb::SyncSessionResponse {
            status: if out.was_alive {
                pb::SessionStatus::Active
            } else {
                pb::SessionStatus::Unknown
            } as i32,
            added: out.added,
            removed: out.removed,
            session_epoch: out.epoch,
        }))
    }

    #[instrument(level = "debug", skip_all, fields(session = %req.get_ref().session_id))]
    async fn close_session(
        &self,
        req: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        let who = principal(&req)?;
        let session: SessionId = convert::session(&req.into_inner().session_id).map_err(Error::from)?;
        who.check_any(Op::Report).map_err(Error::from)?;
        let closed = self
            .store
            .close_session_as(&session, who.owner())
            .await
            .map_err(|e| counted(&who, e))?;
        Ok(Response::new(pb::CloseSessionResponse {
            closed: closed.is_some(),
            session_epoch: closed.unwrap_or(0),
        }))
    }
}
