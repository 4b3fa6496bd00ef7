//! A thin client wrapper that keeps test bodies short.

use occupancy::proto::v1 as pb;
use pb::Mode;
use tonic::transport::Channel;
use tonic::{Code, Status};

pub use crate::support::metrics::arr;
use crate::support::{modes, ReadClient, TestServer, WriteClient};

/// Read and write clients of one server.
#[derive(Clone)]
pub struct Fx {
    pub r: ReadClient,
    pub w: WriteClient,
}

impl Fx {
    pub async fn new(s: &TestServer) -> Self {
        Self {
            r: s.read().await,
            w: s.write().await,
        }
    }

    /// Clients of the server at `url` (a process, or a proxy in front of
    /// some).
    pub async fn connect(url: &str) -> Self {
        Self::over(crate::support::connect(url).await)
    }

    /// Clients sharing `ch`.
    pub fn over(ch: Channel) -> Self {
        Self {
            r: ReadClient::new(ch.clone()),
            w: WriteClient::new(ch),
        }
    }

    pub async fn attach(&self, session: &str, conn: &str, channel: &str, m: &[Mode]) -> [u32; 9] {
        let r = self
            .w
            .clone()
            .attach(pb::AttachRequest {
                session_id: session.into(),
                connection_id: conn.into(),
                channel: channel.into(),
                modes: modes(m),
            })
            .await
            .expect("attach");
        arr(&r.into_inner().metrics.expect("metrics"))
    }

    pub async fn detach(&self, session: &str, conn: &str, channel: &str) -> [u32; 9] {
        let r = self
            .w
            .clone()
            .detach(pb::DetachRequest {
                session_id: session.into(),
                connection_id: conn.into(),
                channel: channel.into(),
            })
            .await
            .expect("detach");
        arr(&r.into_inner().metrics.expect("metrics"))
    }

    pub async fn try_enter(&self, session: &str, conn: &str, channel: &str, client: &str) -> Result<[u32; 9], Status> {
        let r = self
            .w
            .clone()
            .enter_presence(pb::EnterPresenceRequest {
                session_id: session.into(),
                connection_id: conn.into(),
                channel: channel.into(),
                client_id: client.into(),
            })
            .await?;
        Ok(arr(&r.into_inner().metrics.expect("metrics")))
    }

    pub async fn enter(&self, session: &str, conn: &str, channel: &str, client: &str) -> [u32; 9] {
        self.try_enter(session, conn, channel, client).await.expect("enter")
    }

    pub async fn leave(&self, session: &str, conn: &str, channel: &str, client: &str) -> [u32; 9] {
        let r = self
            .w
            .clone()
            .leave_presence(pb::LeavePresenceRequest {
                session_id: session.into(),
                connection_id: conn.into(),
                channel: channel.into(),
                client_id: client.into(),
            })
            .await
            .expect("leave");
        arr(&r.into_inner().metrics.expect("metrics"))
    }

    /// Sends a whole Apply request; its answer.
    pub async fn send(&self, req: pb::ApplyRequest) -> pb::ApplyResponse {
        self.w.clone().apply(req).await.expect("apply").into_inner()
    }

    pub async fn apply(&self, session: &str, ops: Vec<pb::operation::Op>) -> Vec<pb::OperationResult> {
        self.try_apply(session, ops, false).await.expect("apply")
    }

    pub async fn try_apply(
        &self,
        session: &str,
        ops: Vec<pb::operation::Op>,
        include_metrics: bool,
    ) -> Result<Vec<pb::OperationResult>, Status> {
        let r = self
            .w
            .clone()
            .apply(pb::ApplyRequest {
                include_metrics,
                ..batch(session, ops)
            })
            .await?;
        Ok(r.into_inner().results)
    }

    pub async fn keep_alive(&self, session: &str, ttl_ms: u32) -> pb::KeepAliveResponse {
        self.w
            .clone()
            .keep_alive(pb::KeepAliveRequest {
                session_id: session.into(),
                ttl_ms,
            })
            .await
            .expect("keep alive")
            .into_inner()
    }

    pub async fn close(&self, session: &str) -> bool {
        self.w
            .clone()
            .close_session(pb::CloseSessionRequest {
                session_id: session.into(),
            })
            .await
            .expect("close")
            .into_inner()
            .closed
    }

    pub async fn details(&self, channel: &str) -> pb::ChannelDetails {
        self.r
            .clone()
            .get_occupancy(pb::GetOccupancyRequest {
                channel: channel.into(),
            })
            .await
            .expect("get")
            .into_inner()
            .channel
            .expect("channel")
    }

    pub async fn get(&self, channel: &str) -> [u32; 9] {
        let d = self.details(channel).await;
        let s = d.status.expect("status");
        let m = arr(&s.occupancy.expect("occupancy").metrics.expect("metrics"));
        assert_eq!(s.is_active, m[0] > 0, "is_active follows connections");
        m
    }

    pub async fn list(&self, req: pb::ListChannelsRequest) -> Result<pb::ListChannelsResponse, Status> {
        Ok(self.r.clone().list_channels(req).await?.into_inner())
    }

    /// Every channel of a walk, following cursors (at most 10,000 pages).
    pub async fn list_all(&self, prefix: &str, limit: u32) -> Vec<String> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        for _ in 0..10_000 {
            let page = self
                .list(pb::ListChannelsRequest {
                    prefix: prefix.into(),
                    limit,
                    cursor: cursor.clone(),
                    by: pb::ListBy::Id as i32,
                    order: 0,
                })
                .await
                .expect("list");
            out.extend(page.channels.into_iter().map(|c| c.channel_id));
            if page.next_cursor.is_empty() {
                return out;
            }
            cursor = page.next_cursor;
        }
        panic!("walk did not end within 10,000 pages");
    }
}

/// Every attach mode.
pub const ALL_MODES: [Mode; 6] = [
    Mode::Publish,
    Mode::Subscribe,
    Mode::Presence,
    Mode::PresenceSubscribe,
    Mode::ObjectPublish,
    Mode::ObjectSubscribe,
];

/// An Apply request of `ops` for `session`, every other field unset.
pub fn batch(session: &str, ops: Vec<pb::operation::Op>) -> pb::ApplyRequest {
    pb::ApplyRequest {
        session_id: session.into(),
        operations: ops.into_iter().map(|op| pb::Operation { op: Some(op) }).collect(),
        ..Default::default()
    }
}

pub fn attach_op(conn: &str, channel: &str, m: &[Mode]) -> pb::operation::Op {
    pb::operation::Op::Attach(pb::AttachOperation {
        connection_id: conn.into(),
        channel: channel.into(),
        modes: modes(m),
    })
}

pub fn detach_op(conn: &str, channel: &str) -> pb::operation::Op {
    pb::operation::Op::Detach(pb::DetachOperation {
        connection_id: conn.into(),
        channel: channel.into(),
    })
}

pub fn enter_op(conn: &str, channel: &str, client: &str) -> pb::operation::Op {
    pb::operation::Op::Enter(pb::PresenceOperation {
        connection_id: conn.into(),
        channel: channel.into(),
        client_id: client.into(),
    })
}

pub fn leave_op(conn: &str, channel: &str, client: &str) -> pb::operation::Op {
    pb::operation::Op::Leave(pb::PresenceOperation {
        connection_id: conn.into(),
        channel: channel.into(),
        client_id: client.into(),
    })
}

/// Asserts an INVALID_ARGUMENT naming `field`.
pub fn assert_invalid<T: std::fmt::Debug>(r: Result<T, Status>, field: &str) {
    let e = r.expect_err("expected INVALID_ARGUMENT");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains(field),
        "message {:?} should name {field}",
        e.message()
    );
}
