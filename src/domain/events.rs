//! Occupancy change events: positions in the per-shard event logs, the
//! events themselves, and the resume tokens handed to subscribers.
//!
//! Every committed change appends one event per changed channel to the log
//! of the channel's shard, in the same atomic step as the change. A
//! position names an entry in one shard's log; a resume token names, for
//! every shard, the position up to which a subscriber has everything.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::ids::{ChannelName, InvalidInput};
use super::limits::MAX_EVENT_ID_LEN;
use super::metrics::Metrics;

/// The wall clock now, in ms since the Unix epoch: the commit time the
/// in-memory store stamps on events, and the time of a subscription's
/// `live` and heartbeat messages.
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The `name` of every occupancy event (Ably's in-band event name).
pub const EVENT_NAME: &str = "[meta]occupancy";

/// A position in one shard's event log: a Redis stream id `ms-seq`, or
/// `0-seq` in the in-memory store. Ordered as the log is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence part.
    pub seq: u64,
}

impl Pos {
    /// Before every entry.
    pub const ZERO: Pos = Pos { ms: 0, seq: 0 };

    /// The position just before this one (entries strictly after it
    /// include this one).
    pub fn pred(self) -> Pos {
        match (self.ms, self.seq) {
            (0, 0) => Pos::ZERO,
            (ms, 0) => Pos {
                ms: ms - 1,
                seq: u64::MAX,
            },
            (ms, seq) => Pos { ms, seq: seq - 1 },
        }
    }

    /// Parses `ms-seq`.
    pub fn parse(s: &str) -> Option<Pos> {
        let (ms, seq) = s.split_once('-')?;
        Some(Pos {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// The event log shard of a channel: 32-bit FNV-1a of its name modulo the
/// number of shards (the Lua scripts compute the same function).
pub fn shard_of(channel: &str, shards: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in channel.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(16_777_619);
    }
    h % shards.max(1)
}

/// One committed change of one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    /// The log shard.
    pub shard: u32,
    /// Its position in that shard's log.
    pub pos: Pos,
    /// Up to where the shard's log is dispatched once this change is: `pos`,
    /// or just before it when more changes of the same log entry follow.
    pub covers: Pos,
    /// The channel.
    pub channel: ChannelName,
    /// The channel's metrics after the change.
    pub metrics: Metrics,
    /// Commit time, ms since the Unix epoch.
    pub timestamp_ms: i64,
}

/// What a subscriber hands back to continue: for every shard, the position
/// up to which it has received everything it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeToken {
    /// Per shard.
    pub positions: Vec<Pos>,
}

/// Version byte of the resume token ([`event_id`]).
pub(crate) const TOKEN_VERSION: u8 = 1;

/// Appends `v` as a LEB128 varint (as the resume token holds positions).
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn get_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// An event id: the event's own position as 32 hex digits (so ids of one
/// channel sort in order as plain strings), a dot, and the resume token.
pub fn event_id(own: Pos, token: &ResumeToken) -> String {
    let mut raw = Vec::with_capacity(2 + token.positions.len() * 8);
    raw.push(TOKEN_VERSION);
    put_varint(&mut raw, token.positions.len() as u64);
    for p in &token.positions {
        put_varint(&mut raw, p.ms);
        put_varint(&mut raw, p.seq);
    }
    format!("{:016x}{:016x}.{}", own.ms, own.seq, URL_SAFE_NO_PAD.encode(raw))
}

/// The resume token inside an event id.
///
/// # Errors
/// [`InvalidInput`] naming `resume_from` when the id is not one this
/// service issued for `shards` shards.
pub fn parse_event_id(id: &str, shards: u32) -> Result<ResumeToken, InvalidInput> {
    let bad = || InvalidInput::new("resume_from", "is not an event id issued by this service");
    if id.len() > MAX_EVENT_ID_LEN {
        return Err(bad());
    }
    let (_, token) = id.split_once('.').ok_or_else(bad)?;
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let mut rest = raw.as_slice();
    let (&version, r) = rest.split_first().ok_or_else(bad)?;
    rest = r;
    if version != TOKEN_VERSION {
        return Err(bad());
    }
    let n = get_varint(&mut rest).ok_or_else(bad)?;
    if n != u64::from(shards) {
        return Err(InvalidInput::new(
            "resume_from",
            format!("was issued for {n} event shards, this deployment has {shards}"),
        ));
    }
    let mut positions = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let ms = get_varint(&mut rest).ok_or_else(bad)?;
        let seq = get_varint(&mut rest).ok_or_else(bad)?;
        positions.push(Pos { ms, seq });
    }
    if !rest.is_empty() {
        return Err(bad());
    }
    Ok(ResumeToken { positions })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_and_pred() {
        let a = Pos { ms: 5, seq: 0 };
        assert!(a.pred() < a);
        assert_eq!(a.pred(), Pos { ms: 4, seq: u64::MAX });
        assert_eq!(Pos { ms: 5, seq: 3 }.pred(), Pos { ms: 5, seq: 2 });
        assert_eq!(Pos::parse("17-4"), Some(Pos { ms: 17, seq: 4 }));
        assert_eq!(Pos::parse("x"), None);
        assert_eq!(Pos { ms: 17, seq: 4 }.to_string(), "17-4");
    }

    #[test]
    fn ids_round_trip_and_sort_per_channel() {
        let t = ResumeToken {
            positions: vec![
                Pos {
                    ms: 1_700_000_000_000,
                    seq: 3,
                },
                Pos::ZERO,
                Pos { ms: 0, seq: 99 },
            ],
        };
        let a = event_id(Pos { ms: 9, seq: 1 }, &t);
        let b = event_id(Pos { ms: 10, seq: 0 }, &t);
        assert!(a < b);
        assert_eq!(parse_event_id(&a, 3).unwrap(), t);
        assert_eq!(parse_event_id(&a, 4).unwrap_err().field, "resume_from");
        for bad in ["", "x", "abc.", "abc.!!", "abc.AQ"] {
            assert!(parse_event_id(bad, 3).is_err(), "{bad}");
        }
    }

    #[test]
    fn fnv_matches_reference() {
        // FNV-1a 32 of "a" is 0xe40c292c
        assert_eq!(shard_of("a", 1 << 31), 0xe40c_292c % (1 << 31));
        assert!(shard_of("anything", 8) < 8);
    }
}
