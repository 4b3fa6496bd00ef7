//! Requests' protobuf fields as validated domain types (failures name the
//! request field), and the answers' shapes built from domain values. The
//! plain field-for-field conversions (metrics, totals) are `From` impls in
//! [`crate::convert`].

use std::time::Duration;

use crate::domain::events::parse_event_id;
use crate::domain::limits::{
    MAX_BATCH, MAX_BATCH_GET, MAX_CHANNEL_LEN, MAX_DEBOUNCE_MS, MAX_SESSION_TTL, MAX_SUBSCRIBE_CHANNELS,
    MAX_SYNC_ATTACHMENTS, MIN_SESSION_TTL,
};
use crate::domain::list::ListOrder;
use crate::domain::{self, ChannelName, ClientId, ConnectionId, InvalidInput, ModeSet, Operation, SessionId};
use crate::fanout::Spec;
use crate::proto::v1 as pb;

/// Validates a list of proto modes.
pub fn modes(field: &str, values: &[i32]) -> Result<ModeSet, InvalidInput> {
    let mut set = ModeSet::EMPTY;
    for (i, v) in values.iter().enumerate() {
        let mode = match pb::Mode::try_from(*v) {
            Ok(pb::Mode::Publish) => domain::Mode::Publish,
            Ok(pb::Mode::Subscribe) => domain::Mode::Subscribe,
            Ok(pb::Mode::Presence) => domain::Mode::Presence,
            Ok(pb::Mode::PresenceSubscribe) => domain::Mode::PresenceSubscribe,
            Ok(pb::Mode::ObjectPublish) => domain::Mode::ObjectPublish,
            Ok(pb::Mode::ObjectSubscribe) => domain::Mode::ObjectSubscribe,
            Ok(pb::Mode::Unspecified) => {
                return Err(InvalidInput::new(
                    format!("{field}[{i}]"),
                    "MODE_UNSPECIFIED is not a mode",
                ))
            }
            Err(_) => return Err(InvalidInput::new(format!("{field}[{i}]"), format!("unknown mode {v}"))),
        };
        set = set.with(mode);
    }
    Ok(set)
}

/// Ably's ChannelDetails for a channel and its metrics.
pub fn details(name: String, m: Option<domain::Metrics>) -> pb::ChannelDetails {
    pb::ChannelDetails {
        channel_id: name,
        status: m.map(|m| pb::ChannelStatus {
            is_active: m.is_active(),
            occupancy: Some(pb::Occupancy {
                metrics: Some(m.into()),
            }),
        }),
    }
}

/// The channels of a batch read: 1 to [`MAX_BATCH_GET`] valid names, each
/// error naming `channels[i]`.
pub fn batch_channels(names: Vec<String>) -> Result<Vec<ChannelName>, InvalidInput> {
    if names.is_empty() || names.len() > MAX_BATCH_GET {
        return Err(InvalidInput::new(
            "channels",
            format!("must hold 1 to {MAX_BATCH_GET} channels, got {}", names.len()),
        ));
    }
    names
        .into_iter()
        .enumerate()
        .map(|(i, n)| ChannelName::parse(&format!("channels[{i}]"), n))
        .collect()
}

/// The list order of a request.
pub fn list_order(v: i32) -> Result<ListOrder, InvalidInput> {
    match pb::ListOrder::try_from(v) {
        Ok(pb::ListOrder::Unspecified | pb::ListOrder::Name) => Ok(ListOrder::Name),
        Ok(pb::ListOrder::ConnectionsDesc) => Ok(ListOrder::ConnectionsDesc),
        Err(_) => Err(InvalidInput::new("order", format!("unknown order {v}"))),
    }
}

/// Whether a list request wants metrics.
pub fn list_by_value(v: i32) -> Result<bool, InvalidInput> {
    match pb::ListBy::try_from(v) {
        Ok(pb::ListBy::Unspecified | pb::ListBy::Value) => Ok(true),
        Ok(pb::ListBy::Id) => Ok(false),
        Err(_) => Err(InvalidInput::new("by", format!("unknown value {v}"))),
    }
}

/// A session id field.
pub fn session(v: &str) -> Result<SessionId, InvalidInput> {
    SessionId::parse("session_id", v)
}

/// An attach from its fields.
pub fn attach(conn: &str, channel: &str, m: &[i32]) -> Result<Operation, InvalidInput> {
    Ok(Operation::Attach {
        connection: ConnectionId::parse("connection_id", conn)?,
        channel: ChannelName::parse("channel", channel)?,
        modes: modes("modes", m)?,
    })
}

/// A detach from its fields.
pub fn detach(conn: &str, channel: &str) -> Result<Operation, InvalidInput> {
    Ok(Operation::Detach {
        connection: ConnectionId::parse("connection_id", conn)?,
        channel: ChannelName::parse("channel", channel)?,
    })
}

/// An enter (or, with `leave`, a leave) from its fields.
pub fn presence(conn: &str, channel: &str, client: &str, leave: bool) -> Result<Operation, InvalidInput> {
    let connection = ConnectionId::parse("connection_id", conn)?;
    let channel = ChannelName::parse("channel", channel)?;
    let client = ClientId::parse("client_id", client)?;
    Ok(if leave {
        Operation::Leave {
            connection,
            channel,
            client,
        }
    } else {
        Operation::Enter {
            connection,
            channel,
            client,
        }
    })
}

/// One operation of an Apply batch.
pub fn operation(op: &pb::Operation) -> Result<Operation, InvalidInput> {
    use pb::operation::Op;
    match &op.op {
        Some(Op::Attach(a)) => attach(&a.connection_id, &a.channel, &a.modes).map_err(|e| e.within("attach")),
        Some(Op::Detach(d)) => detach(&d.connection_id, &d.channel).map_err(|e| e.within("detach")),
        Some(Op::Enter(p)) => {
            presence(&p.connection_id, &p.channel, &p.client_id, false).map_err(|e| e.within("enter"))
        }
        Some(Op::Leave(p)) => presence(&p.connection_id, &p.channel, &p.client_id, true).map_err(|e| e.within("leave")),
        None => Err(InvalidInput::new(
            "op",
            "one of attach, detach, enter or leave must be set",
        )),
    }
}

/// Every operation of an Apply batch, or the first invalid one.
pub fn operations(ops: &[pb::Operation]) -> Result<Vec<Operation>, InvalidInput> {
    if ops.is_empty() {
        return Err(InvalidInput::new("operations", "must not be empty"));
    }
    if ops.len() > MAX_BATCH {
        return Err(InvalidInput::new(
            "operations",
            format!("at most {MAX_BATCH} operations per batch, got {}", ops.len()),
        ));
    }
    ops.iter()
        .enumerate()
        .map(|(i, op)| operation(op).map_err(|e| e.within(&format!("operations[{i}]"))))
        .collect()
}

/// A metric category.
pub fn category(field: &str, v: i32) -> Result<domain::Category, InvalidInput> {
    use domain::Category as C;
    Ok(match pb::MetricCategory::try_from(v) {
        Ok(pb::MetricCategory::Connections) => C::Connections,
        Ok(pb::MetricCategory::Publishers) => C::Publishers,
        Ok(pb::MetricCategory::Subscribers) => C::Subscribers,
        Ok(pb::MetricCategory::PresenceConnections) => C::PresenceConnections,
        Ok(pb::MetricCategory::PresenceMembers) => C::PresenceMembers,
        Ok(pb::MetricCategory::PresenceSubscribers) => C::PresenceSubscribers,
        Ok(pb::MetricCategory::ObjectPublishers) => C::ObjectPublishers,
        Ok(pb::MetricCategory::ObjectSubscribers) => C::ObjectSubscribers,
        Ok(pb::MetricCategory::PresenceClients) => C::PresenceClients,
        Ok(pb::MetricCategory::Unspecified) => {
            return Err(InvalidInput::new(
                field,
                "METRIC_CATEGORY_UNSPECIFIED is not a category",
            ))
        }
        Err(_) => return Err(InvalidInput::new(field, format!("unknown category {v}"))),
    })
}

/// A subscription request, validated.
pub fn subscription(r: pb::SubscribeOccupancyRequest, shards: u32) -> Result<Spec, InvalidInput> {
    if r.channels.len() > MAX_SUBSCRIBE_CHANNELS {
        return Err(InvalidInput::new(
            "channels",
            format!(
                "at most {MAX_SUBSCRIBE_CHANNELS} channels per subscription, got {}",
                r.channels.len()
            ),
        ));
    }
    let channels = r
        .channels
        .into_iter()
        .enumerate()
        .map(|(i, c)| ChannelName::parse(&format!("channels[{i}]"), c))
        .collect::<Result<Vec<_>, _>>()?;
    let prefix = if r.prefix.is_empty() {
        None
    } else {
        if r.prefix.len() > MAX_CHANNEL_LEN || r.prefix.chars().any(char::is_control) {
            return Err(InvalidInput::new(
                "prefix",
                format!("must be at most {MAX_CHANNEL_LEN} bytes without control characters"),
            ));
        }
        Some(r.prefix)
    };
    let prefix = if r.all_channels {
        if prefix.is_some() {
            return Err(InvalidInput::new(
                "all_channels",
                "cannot be combined with prefix (it already follows every channel)",
            ));
        }
        // the empty prefix: every name starts with it
        Some(String::new())
    } else {
        prefix
    };
    if channels.is_empty() && prefix.is_none() {
        return Err(InvalidInput::new(
            "channels",
            "give at least one channel, a prefix, or all_channels",
        ));
    }
    let categories = r
        .categories
        .iter()
        .enumerate()
        .map(|(i, c)| category(&format!("categories[{i}]"), *c))
        .collect::<Result<Vec<_>, _>>()?;
    if r.debounce_ms > MAX_DEBOUNCE_MS {
        return Err(InvalidInput::new(
            "debounce_ms",
            format!("must be at most {MAX_DEBOUNCE_MS}"),
        ));
    }
    let resume = if r.resume_from.is_empty() {
        None
    } else {
        Some(parse_event_id(&r.resume_from, shards)?)
    };
    Ok(Spec {
        channels,
        prefix,
        categories,
        debounce: Duration::from_millis(u64::from(r.debounce_ms)),
        resume,
    })
}

/// A lease length field in ms: 0 for none, else [`MIN_SESSION_TTL`] to
/// [`MAX_SESSION_TTL`].
pub fn ttl(v: u32) -> Result<Option<u64>, InvalidInput> {
    let (min, max) = (MIN_SESSION_TTL.as_millis(), MAX_SESSION_TTL.as_millis());
    match v {
        0 => Ok(None),
        t if u128::from(t) < min || u128::from(t) > max => Err(InvalidInput::new(
            "ttl_ms",
            format!("must be 0 or between {min} and {max}"),
        )),
        t => Ok(Some(u64::from(t))),
    }
}

/// The holdings a SyncSession declares.
pub fn held(list: &[pb::SessionAttachment]) -> Result<Vec<domain::HeldAttachment>, InvalidInput> {
    if list.len() > MAX_SYNC_ATTACHMENTS {
        return Err(InvalidInput::new(
            "attachments",
            format!("at most {MAX_SYNC_ATTACHMENTS} per call, got {}", list.len()),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(list.len());
    for (i, a) in list.iter().enumerate() {
        let at = |f: &str| format!("attachments[{i}].{f}");
        let connection = ConnectionId::parse(&at("connection_id"), a.connection_id.as_str())?;
        let channel = ChannelName::parse(&at("channel"), a.channel.as_str())?;
        let modes = modes(&at("modes"), &a.modes)?;
        let mut members = a
            .presence_client_ids
            .iter()
            .enumerate()
            .map(|(j, c)| ClientId::parse(&at(&format!("presence_client_ids[{j}]")), c.as_str()))
            .collect::<Result<Vec<_>, _>>()?;
        members.sort();
        members.dedup();
        if !members.is_empty() && !modes.contains(domain::Mode::Presence) {
            return Err(InvalidInput::new(
                at("presence_client_ids"),
                "presence members need MODE_PRESENCE",
            ));
        }
        if !seen.insert((connection.clone(), channel.clone())) {
            return Err(InvalidInput::new(
                at("channel"),
                "the same connection and channel appear twice",
            ));
        }
        out.push(domain::HeldAttachment {
            connection,
            channel,
            modes,
            members,
        });
    }
    Ok(out)
}
