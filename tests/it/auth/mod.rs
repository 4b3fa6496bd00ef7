//! Access control through gRPC, on both stores: the credential matrix of
//! every RPC, filtered listings, prefix subscriptions, token-bound streams,
//! session ownership, key file reloads; and the safe default of the real
//! binary.

mod http_side;
mod keys;
mod matrix;
mod scope;
mod sessions;

use std::time::Duration;

use occupancy::proto::v1 as pb;
use pb::Mode;

use crate::fixture::*;
use crate::support::auth::As;

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

fn attach(conn: &str, channel: &str) -> pb::AttachRequest {
    pb::AttachRequest {
        session_id: "fe-1".into(),
        connection_id: conn.into(),
        channel: channel.into(),
        modes: crate::support::modes(&[Mode::Presence, Mode::Subscribe]),
    }
}
