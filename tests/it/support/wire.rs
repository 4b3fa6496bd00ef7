//! The reference model's writes and holdings as gRPC messages.

use occupancy::proto::v1 as pb;

use crate::model::{self, Op};
use crate::support::modes;

/// The model's mode bits as the wire's modes, in bit order.
pub fn modes_of(bits: u8) -> Vec<i32> {
    let set: Vec<pb::Mode> = [
        (model::PUBLISH, pb::Mode::Publish),
        (model::SUBSCRIBE, pb::Mode::Subscribe),
        (model::PRESENCE, pb::Mode::Presence),
        (model::PRESENCE_SUBSCRIBE, pb::Mode::PresenceSubscribe),
        (model::OBJECT_PUBLISH, pb::Mode::ObjectPublish),
        (model::OBJECT_SUBSCRIBE, pb::Mode::ObjectSubscribe),
    ]
    .into_iter()
    .filter(|(b, _)| bits & b != 0)
    .map(|(_, m)| m)
    .collect();
    modes(&set)
}

/// One model write as an Apply operation.
pub fn op(op: &Op) -> pb::operation::Op {
    match op {
        Op::Attach { conn, channel, modes } => pb::operation::Op::Attach(pb::AttachOperation {
            connection_id: conn.clone(),
            channel: channel.clone(),
            modes: modes_of(*modes),
        }),
        Op::Detach { conn, channel } => pb::operation::Op::Detach(pb::DetachOperation {
            connection_id: conn.clone(),
            channel: channel.clone(),
        }),
        Op::Enter { conn, channel, client } => pb::operation::Op::Enter(pb::PresenceOperation {
            connection_id: conn.clone(),
            channel: channel.clone(),
            client_id: client.clone(),
        }),
        Op::Leave { conn, channel, client } => pb::operation::Op::Leave(pb::PresenceOperation {
            connection_id: conn.clone(),
            channel: channel.clone(),
            client_id: client.clone(),
        }),
    }
}

/// A session's holdings in the model (connection, channel, mode bits,
/// members) as SyncSession's attachments.
pub fn holdings(h: &[(String, String, u8, Vec<String>)]) -> Vec<pb::SessionAttachment> {
    h.iter()
        .map(|(conn, ch, modes, members)| pb::SessionAttachment {
            connection_id: conn.clone(),
            channel: ch.clone(),
            modes: modes_of(*modes),
            presence_client_ids: members.clone(),
        })
        .collect()
}
