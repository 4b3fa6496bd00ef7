//! Access control: the credential matrix of every RPC (`matrix`), what a
//! key's scope lets it see (`scope`), session ownership (`sessions`), key
//! files and the binary's safe default (`keys`), and the HTTP side
//! (`http_side`); with the requests and state these share.

mod http_side;
mod keys;
mod matrix;
mod scope;
mod sessions;

use std::time::Duration;

use occupancy::proto::v1 as pb;
use pb::Mode;

use crate::fixture::*;
use crate::support::auth::{with, As, FE};
use crate::support::TestServer;

/// Lease of the tests' sessions: longer than any test here.
const TTL: Duration = Duration::from_secs(120);

/// Everything the store holds, as a full-access key sees it: every
/// channel with its metrics.
async fn everything(a: &mut As) -> Vec<(String, [u32; 9])> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    for _ in 0..1000 {
        let page =
            a.r.list_channels(pb::ListChannelsRequest {
                limit: 1000,
                cursor: cursor.clone(),
                by: pb::ListBy::Value as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for c in page.channels {
            let m = c
                .status
                .and_then(|s| s.occupancy)
                .and_then(|o| o.metrics)
                .unwrap_or_default();
            out.push((c.channel_id, arr(&m)));
        }
        if page.next_cursor.is_empty() {
            return out;
        }
        cursor = page.next_cursor;
    }
    panic!("more than 1000 pages");
}

/// Session `fe-1` attaching `conn` to `channel` with presence.
fn attach(conn: &str, channel: &str) -> pb::AttachRequest {
    pb::AttachRequest {
        session_id: "fe-1".into(),
        connection_id: conn.into(),
        channel: channel.into(),
        modes: crate::support::modes(&[Mode::Presence, Mode::Subscribe]),
    }
}

/// `session` entering `client` through connection `c-1` on `rooms:1`.
fn enter(session: &str, client: &str) -> pb::EnterPresenceRequest {
    pb::EnterPresenceRequest {
        session_id: session.into(),
        connection_id: "c-1".into(),
        channel: "rooms:1".into(),
        client_id: client.into(),
    }
}

/// `session` leaving `client` through connection `c-1` on `rooms:1`.
fn leave(session: &str, client: &str) -> pb::LeavePresenceRequest {
    let e = enter(session, client);
    pb::LeavePresenceRequest {
        session_id: e.session_id,
        connection_id: e.connection_id,
        channel: e.channel,
        client_id: e.client_id,
    }
}

/// A KeepAlive of `session` asking for a minute.
fn keep_alive(session: &str) -> pb::KeepAliveRequest {
    pb::KeepAliveRequest {
        session_id: session.into(),
        ttl_ms: 60_000,
    }
}

fn close(session: &str) -> pb::CloseSessionRequest {
    pb::CloseSessionRequest {
        session_id: session.into(),
    }
}

fn sync(session: &str) -> pb::SyncSessionRequest {
    pb::SyncSessionRequest {
        session_id: session.into(),
        ..Default::default()
    }
}

/// An Apply of `session` detaching `c-1` from `rooms:1`.
fn detach_batch(session: &str) -> pb::ApplyRequest {
    batch(session, vec![detach_op("c-1", "rooms:1")])
}

/// The state the ownership tests start from: front end `fe`'s session
/// `fe-1` holds `c-1` on `rooms:1` with `alice` entered.
async fn fe_holds_alice(s: &TestServer) {
    let mut fe = with(s, FE).await;
    fe.w.attach(attach("c-1", "rooms:1")).await.unwrap();
    fe.w.enter_presence(enter("fe-1", "alice")).await.unwrap();
}
