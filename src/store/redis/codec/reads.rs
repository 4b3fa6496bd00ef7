//! The replies of the read functions (list, snapshot, history, stream
//! state, session state) and the list function's arguments.

use redis::Cmd;

use super::parse_metrics_list;
use crate::domain::list::{name_of_busy_key, ListOrder};
use crate::domain::{
    ChannelName, ClientId, ConnectionId, HeldAttachment, ListPage, ListQuery, ListedChannel, ModeSet, Pos,
};
use crate::error::{Error, Result};
use crate::store::{History, Snapshot};

/// Adds the list function's arguments (`lua/list.lua`) for a page.
pub(in crate::store::redis) fn list_args(inv: &mut Cmd, q: &ListQuery) {
    let (start, inclusive) = match q.order {
        ListOrder::Name => q.name_start(),
        ListOrder::ConnectionsDesc => (q.after.clone().unwrap_or_default(), false),
    };
    inv.arg(match q.order {
        ListOrder::Name => "n",
        ListOrder::ConnectionsDesc => "c",
    })
    .arg(start)
    .arg(if inclusive { "1" } else { "0" })
    .arg(crate::store::redis::keys::prefix_upper_bound(&q.prefix))
    .arg(&q.prefix)
    .arg(q.limit)
    .arg(if q.with_metrics { "1" } else { "0" });
}

/// The list function's reply: index keys, their counters (when asked), 1
/// when more follow.
pub(in crate::store::redis) type ListReply = (Vec<String>, Vec<u8>, u8);

/// A page of channels from the list function's reply.
pub(in crate::store::redis) fn list_page(q: &ListQuery, (keys, counters, more): ListReply) -> Result<ListPage> {
    let mut metrics = if q.with_metrics {
        parse_metrics_list(&counters, keys.len(), "list")?.into_iter()
    } else {
        Vec::new().into_iter()
    };
    let next_cursor = (more == 1)
        .then(|| keys.last().map(|k| crate::domain::list::encode_cursor(q.order, k)))
        .flatten();
    let mut channels = Vec::with_capacity(keys.len());
    for key in &keys {
        let name = match q.order {
            ListOrder::Name => key.as_str(),
            ListOrder::ConnectionsDesc => name_of_busy_key(key),
        };
        let name = ChannelName::parse("channel", name)
            .map_err(|e| Error::Internal(format!("corrupt channel index entry: {e}")))?;
        channels.push(ListedChannel {
            name,
            metrics: metrics.next(),
        });
    }
    Ok(ListPage { channels, next_cursor })
}

/// The snapshot function's reply (`lua/snapshot.lua`): the channels'
/// counters, the last position of every shard.
pub(in crate::store::redis) type SnapshotReply = (Vec<u8>, Vec<String>);

/// A snapshot of `channels` channels over `shards` event shards from its
/// reply.
pub(in crate::store::redis) fn snapshot(
    channels: usize,
    shards: u32,
    (counters, positions): SnapshotReply,
) -> Result<Snapshot> {
    let bad = |what: &str| Error::Internal(format!("snapshot function returned {what}"));
    if positions.len() != shards as usize {
        return Err(bad("the wrong number of positions"));
    }
    let metrics = parse_metrics_list(&counters, channels, "snapshot")?;
    let positions = positions
        .iter()
        .map(|p| Pos::parse(p).ok_or_else(|| bad("a malformed stream id")))
        .collect::<Result<Vec<_>>>()?;
    Ok(Snapshot { metrics, positions })
}

/// The history function's reply (`lua/history.lua`): 1 for a gap, then
/// position and channel of every change, then 1 when more follow.
pub(in crate::store::redis) type HistoryReply = (u8, Vec<String>, u8);

/// A shard's history from its reply; entries naming an invalid channel
/// are skipped.
pub(in crate::store::redis) fn history((gap, flat, more): HistoryReply) -> Result<History> {
    let mut changes = Vec::with_capacity(flat.len() / 2);
    for pair in flat.chunks(2) {
        let (Some(pos), Some(ch)) = (Pos::parse(&pair[0]), pair.get(1)) else {
            return Err(Error::Internal("history function returned a malformed entry".into()));
        };
        if let Ok(ch) = ChannelName::parse("channel", ch.as_str()) {
            changes.push((pos, ch));
        }
    }
    Ok(History {
        changes,
        gap: gap == 1,
        more: more == 1,
    })
}

/// The stream-state function's reply (`lua/stream_state.lua`): 1 when the
/// stream exists, its last generated id, its largest deleted id.
pub(in crate::store::redis) type StreamState = (u8, String, String);

/// What a session holds, from the session-state function's reply
/// (`lua/session_state.lua`): per attachment its connection, channel, mode
/// bits, member count and members, flat.
pub(in crate::store::redis) fn held_attachments(flat: Vec<String>) -> Result<Vec<HeldAttachment>> {
    let bad = || Error::Internal("session state function returned a malformed list".into());
    let mut out = Vec::new();
    let mut it = flat.into_iter();
    while let Some(connection) = it.next() {
        let channel = it.next().ok_or_else(bad)?;
        let modes: u8 = it.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let n: usize = it.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let mut members = Vec::with_capacity(n);
        for _ in 0..n {
            members.push(ClientId::parse("client_id", it.next().ok_or_else(bad)?).map_err(|_| bad())?);
        }
        members.sort();
        out.push(HeldAttachment {
            connection: ConnectionId::parse("connection_id", connection).map_err(|_| bad())?,
            channel: ChannelName::parse("channel", channel).map_err(|_| bad())?,
            modes: ModeSet::from_bits(modes),
            members,
        });
    }
    out.sort();
    Ok(out)
}
