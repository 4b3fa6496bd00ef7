//! The Rust↔Lua protocol of the function library (`functions.rs`), read in
//! one file facing the Lua under `lua/`: the arguments each function is
//! given, how its reply is read, and the constants both sides share, which
//! the library receives as its first lines ([`lua_constants`]).
//!
//! Every call starts with the key prefix, the number of event shards and
//! the streams' length (`functions::call`); the function's own arguments
//! follow (each Lua file's first comment lists them).
//!
//! Counters travel in one format everywhere: a channel's counters as
//! stored (`keys::channel_metrics`), unsigned 32-bit little-endian
//! integers in [`Category::ALL`] order, [`PACKED_METRICS_LEN`] bytes. The
//! apply function answers them after each operation's status byte, `list`
//! and `snapshot` as one string of every channel's, event entries carry
//! them as values, and a Get reads the stored strings themselves;
//! [`parse_metrics`] reads them all.

use redis::{Cmd, Value};

use super::writer::Job;
use crate::domain::limits::{LEASE_EXTEND_SLACK, MAX_CHANNELS_PER_CONNECTION};
use crate::domain::list::busy_key;
use crate::domain::metrics::mode_category;
use crate::domain::{Applied, Category, KeepAliveOutcome, Metrics, Mode, OpResult, OpStatus, Operation};
use crate::error::{Error, Result};
use crate::store::ReapReport;

mod reads;
pub(super) use reads::{held_attachments, history, list_args, list_page, snapshot, StreamState};

/// Bytes of a channel's counters as stored (`keys::channel_metrics`).
pub(super) const PACKED_METRICS_LEN: usize = 4 * Category::ALL.len();

/// Each operation status and its byte in the apply function's reply, in
/// byte order from 1 (the Lua indexes its `STATUS_BYTE` list by it).
const STATUSES: [(OpStatus, u8, &str); 3] = [
    (OpStatus::Ok, 1, "ST_OK"),
    (OpStatus::NotPresenceAttached, 2, "ST_NOT_PRESENCE_ATTACHED"),
    (OpStatus::TooManyChannels, 3, "ST_TOO_MANY_CHANNELS"),
];

/// The apply function answers one of these instead of a write's results
/// when it applied nothing of it: the write's sequence was not above the
/// lease's last one, ...
const REFUSED_STALE: i64 = -1;
/// ... the write was built under another lease than the live one, ...
const REFUSED_EPOCH: i64 = -2;
/// ... the session's lease belongs to another owner, ...
const REFUSED_OWNER: i64 = -3;
/// ... or the write would move a connection out of another owner's live
/// lease.
const REFUSED_MOVE: i64 = -4;

/// A session's state in the answers of `keep_alive` and `close`: alive, ...
const SESSION_ALIVE: u8 = 1;
/// ... unknown or expired, ...
const SESSION_UNKNOWN: u8 = 2;
/// ... or alive under another owner (nothing changed).
const SESSION_NOT_OWNER: u8 = 3;

/// The library's first lines: the constants of this protocol and of the
/// domain that the Lua code uses, as Lua locals, so no number is copied
/// into it by hand.
pub(super) fn lua_constants() -> String {
    let slot = |c: Category| Category::ALL.iter().position(|x| *x == c).map_or(0, |i| i + 1);
    let mode_slots: Vec<String> = Mode::ALL
        .iter()
        .map(|m| format!("{{ {}, {} }}", m.bit(), slot(mode_category(*m))))
        .collect();
    let counters = "I4".repeat(Category::ALL.len());
    let (digits, separator, top) = busy_layout();
    let lines = [
        "-- Constants shared with the service's Rust code, written here from it".to_string(),
        "-- when the library loads (src/store/redis/codec/mod.rs).".to_string(),
        format!("local MAX_CHANNELS = {MAX_CHANNELS_PER_CONNECTION}"),
        format!(
            "local C, PM, PCL = {}, {}, {}",
            slot(Category::Connections),
            slot(Category::PresenceMembers),
            slot(Category::PresenceClients)
        ),
        format!("local MODE_SLOTS = {{ {} }}", mode_slots.join(", ")),
        format!("local PRESENCE = {}", Mode::Presence.bit()),
        format!("local EXTEND_SLACK_MS = {}", LEASE_EXTEND_SLACK.as_millis()),
        format!("local PACKED_LEN = {PACKED_METRICS_LEN}"),
        format!("local PACK = '<{counters}'"),
        format!("local OP_PACK = '<B{counters}'"),
        format!(
            "local {} = {}",
            STATUSES.map(|s| s.2).join(", "),
            STATUSES.map(|s| s.1.to_string()).join(", ")
        ),
        format!(
            "local STATUS_BYTE = {{ {} }}",
            STATUSES.map(|s| format!("'\\{}'", s.1)).join(", ")
        ),
        format!(
            "local REFUSED_STALE, REFUSED_EPOCH, REFUSED_OWNER, REFUSED_MOVE = {REFUSED_STALE}, {REFUSED_EPOCH}, \
             {REFUSED_OWNER}, {REFUSED_MOVE}"
        ),
        format!(
            "local SESSION_ALIVE, SESSION_UNKNOWN, SESSION_NOT_OWNER = {SESSION_ALIVE}, {SESSION_UNKNOWN}, \
             {SESSION_NOT_OWNER}"
        ),
        format!(
            "local BUSY_FORMAT, BUSY_TOP, BUSY_NAME_AT = '%0{digits}d{separator}', {top}, {}",
            digits + separator.len() + 1
        ),
        LUA_CONSTANTS_END.to_string(),
    ];
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// The last line of [`lua_constants`] (`scripts/redis-instructions` finds
/// the header by it).
const LUA_CONSTANTS_END: &str = "-- end of generated constants";

/// How [`busy_key`] lays out a key: the number of digits of its count
/// part, the separator before the name, and the count part of a channel
/// with no connection (the count part is that minus the connections).
fn busy_layout() -> (usize, String, u64) {
    let empty = busy_key(0, "");
    let digits = empty.bytes().take_while(u8::is_ascii_digit).count();
    let top = empty[..digits].parse().unwrap_or(u64::from(u32::MAX));
    (digits, empty[digits..].to_string(), top)
}

/// Parses a channel's counters as stored (`keys::channel_metrics`).
/// Absent or malformed counters count as zero.
pub(super) fn parse_metrics(bytes: &[u8]) -> Metrics {
    let mut a = [0u32; 9];
    if bytes.len() == PACKED_METRICS_LEN {
        for (slot, v) in a.iter_mut().zip(bytes.chunks_exact(4)) {
            *slot = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
        }
    }
    Metrics::from_array(a)
}

/// The counters of `n` channels answered as one string (`packed_list` in
/// `lua/counters.lua`).
fn parse_metrics_list(bytes: &[u8], n: usize, function: &str) -> Result<Vec<Metrics>> {
    if bytes.len() != n * PACKED_METRICS_LEN {
        return Err(Error::Internal(format!(
            "{function} function returned {} bytes of counters for {n} channels",
            bytes.len()
        )));
    }
    Ok(bytes.chunks_exact(PACKED_METRICS_LEN).map(parse_metrics).collect())
}

/// The token (and epoch) for a lease a call may open: the caller's when it
/// gave one, else a random non-zero 64-bit number, so tokens never repeat,
/// even after Redis lost its data (see `live_token` in `lua/leases.lua`).
fn token_or_new(given: u64) -> u64 {
    if given != 0 {
        given
    } else {
        rand::random::<u64>().max(1)
    }
}

/// A lease epoch from a token as Redis holds it (Lua's `false`, nil in
/// RESP2 and false in RESP3: no lease).
fn epoch_of(raw: &Value) -> Result<u64> {
    match raw {
        Value::Nil | Value::Boolean(false) => Ok(0),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| Error::Internal(format!("malformed lease token {b:?}"))),
        other => Err(Error::Internal(format!("a lease token was {other:?}"))),
    }
}

/// Adds the apply function's arguments for `jobs` (`lua/apply.lua`): the
/// default lease, then per write its session, flags, sequence, epoch, a
/// new token, owner and operations. Returns the number of operations.
pub(super) fn apply_args(inv: &mut Cmd, default_ttl_ms: u64, shards: u32, jobs: &[Job]) -> usize {
    inv.arg(default_ttl_ms).arg(jobs.len());
    let shards = shards.max(1);
    let mut total = 0usize;
    for job in jobs {
        inv.arg(job.session.as_str())
            .arg(if job.include_metrics { "1" } else { "0" })
            .arg(job.sequence)
            .arg(job.epoch)
            .arg(token_or_new(job.open_epoch))
            .arg(job.owner.as_str())
            .arg(job.ops.len());
        total += job.ops.len();
        for op in &job.ops {
            let channel = op.channel();
            let (kind, extra) = match op {
                Operation::Attach { modes, .. } => ("A", modes.bits().to_string()),
                Operation::Detach { .. } => ("D", String::new()),
                Operation::Enter { client, .. } => ("E", client.as_str().to_string()),
                Operation::Leave { client, .. } => ("L", client.as_str().to_string()),
            };
            inv.arg(kind)
                .arg(op.connection().as_str())
                .arg(channel.as_str())
                .arg(extra)
                .arg(super::keys::shard_of(channel.as_str(), shards));
        }
    }
    total
}

/// Every write's outcome from the apply function's reply: two values per
/// write (see [`write_results`]).
pub(super) fn apply_results(jobs: &[Job], raw: &[Value]) -> Result<Vec<Applied>> {
    if raw.len() != 2 * jobs.len() {
        return Err(Error::Internal(format!(
            "apply function returned {} values for {} writes",
            raw.len(),
            jobs.len()
        )));
    }
    jobs.iter()
        .zip(raw.chunks_exact(2))
        .map(|(job, raw)| write_results(job, &raw[0], &raw[1]))
        .collect()
}

/// One write's outcome from the apply function's reply (`lua/apply.lua`):
/// a string of one status byte per operation, each followed by the
/// channel's packed counters when the write asked for them; or one of the
/// `REFUSED_*` codes (nothing applied); then the session's token after the
/// write.
fn write_results(job: &Job, raw: &Value, token: &Value) -> Result<Applied> {
    let epoch = epoch_of(token)?;
    let bytes = match raw {
        Value::Int(REFUSED_STALE) if job.sequence > 0 => return Ok(Applied::Stale { epoch }),
        Value::Int(REFUSED_EPOCH) if job.epoch > 0 => return Ok(Applied::WrongEpoch { epoch }),
        Value::Int(REFUSED_OWNER) => return Ok(Applied::NotOwner { connection: false }),
        Value::Int(REFUSED_MOVE) => return Ok(Applied::NotOwner { connection: true }),
        Value::BulkString(b) => b.as_slice(),
        other => {
            return Err(Error::Internal(format!(
                "apply function returned {other:?} for a write"
            )))
        }
    };
    let width = if job.include_metrics { 1 + PACKED_METRICS_LEN } else { 1 };
    if bytes.len() != job.ops.len() * width {
        return Err(Error::Internal(format!(
            "apply function returned {} bytes for {} operations",
            bytes.len(),
            job.ops.len()
        )));
    }
    let results = bytes
        .chunks_exact(width)
        .map(|r| OpResult {
            status: STATUSES.iter().find(|s| s.1 == r[0]).map_or(OpStatus::Ok, |s| s.0),
            metrics: job.include_metrics.then(|| parse_metrics(&r[1..])),
        })
        .collect();
    Ok(Applied::Done { results, epoch })
}

/// Adds the keep-alive function's arguments (`lua/keep_alive.lua`).
pub(super) fn keep_alive_args(
    inv: &mut Cmd,
    session: &str,
    ttl_ms: Option<u64>,
    default_ttl_ms: u64,
    owner: &str,
    open_epoch: u64,
) {
    inv.arg(session)
        .arg(ttl_ms.unwrap_or(0))
        .arg(default_ttl_ms)
        .arg(token_or_new(open_epoch))
        .arg(owner);
}

/// The keep-alive function's reply: session state, lease ms, token.
pub(super) type KeepAliveReply = (u8, u64, Value);

/// A keep-alive's outcome from its reply.
pub(super) fn keep_alive_outcome((state, ttl_ms, token): KeepAliveReply) -> Result<KeepAliveOutcome> {
    if state == SESSION_NOT_OWNER {
        return Ok(KeepAliveOutcome::NotOwner);
    }
    let epoch = epoch_of(&token)?;
    Ok(if state == SESSION_ALIVE {
        KeepAliveOutcome::Active { ttl_ms, epoch }
    } else {
        KeepAliveOutcome::Unknown { ttl_ms, epoch }
    })
}

/// The close function's reply (`lua/close.lua`): the retired token, if
/// any, and the session's state.
pub(super) type CloseReply = (Option<String>, u8);

/// What closing a session did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Closed {
    /// Its live lease belongs to another owner: nothing changed.
    NotOwner,
    /// It had no token.
    Nothing,
    /// Its token was retired (its connections are still to be reaped);
    /// the lease's epoch when it was alive.
    Retired { token: String, epoch: Option<u64> },
}

/// A close's outcome from its reply.
pub(super) fn closed((token, state): CloseReply) -> Result<Closed> {
    if state == SESSION_NOT_OWNER {
        return Ok(Closed::NotOwner);
    }
    let Some(token) = token else {
        return Ok(Closed::Nothing);
    };
    let epoch = if state == SESSION_ALIVE {
        let epoch = token
            .parse()
            .map_err(|_| Error::Internal(format!("malformed lease token {token:?}")))?;
        Some(epoch)
    } else {
        None
    };
    Ok(Closed::Retired { token, epoch })
}

/// The reap function's reply (`lua/reap.lua`): sessions retired,
/// connections purged, 1 when work remains.
pub(super) type ReapReply = (usize, usize, u8);

/// A reap round's report from its reply.
pub(super) fn reap_report((expired, removed, more): ReapReply) -> ReapReport {
    ReapReport {
        sessions_expired: expired,
        connections_removed: removed,
        more: more == 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::list::name_of_busy_key;
    use crate::domain::Pos;

    fn packed(values: [u32; 9]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn packed_counters_parse_and_anything_else_is_zero() {
        let want = [1, 2, 3, 4, 5, 6, 7, 8, 4_000_000_000u32];
        let bytes = packed(want);
        assert_eq!(parse_metrics(&bytes), Metrics::from_array(want));
        assert_eq!(parse_metrics(b""), Metrics::from_array([0; 9]));
        assert_eq!(parse_metrics(&bytes[..35]), Metrics::from_array([0; 9]));
        assert_eq!(parse_metrics(b"1,0,1,0,0,0,0,0,0"), Metrics::from_array([0; 9]));
    }

    #[test]
    fn list_and_snapshot_counters_are_one_string_of_packed_counters() {
        let (a, b) = ([1, 0, 1, 0, 0, 0, 0, 0, 0], [2, 1, 0, 0, 0, 0, 0, 0, 70_000]);
        let both = [packed(a), packed(b)].concat();
        assert_eq!(
            parse_metrics_list(&both, 2, "list").unwrap(),
            [Metrics::from_array(a), Metrics::from_array(b)]
        );
        assert_eq!(parse_metrics_list(b"", 0, "list").unwrap(), []);
        assert!(parse_metrics_list(&both, 1, "list").is_err());
        assert!(parse_metrics_list(&both[..40], 2, "list").is_err());
        let positions = vec!["1-0".to_string(), "0-0".to_string()];
        let snap = snapshot(2, 2, (both.clone(), positions.clone())).unwrap();
        assert_eq!(snap.metrics, [Metrics::from_array(a), Metrics::from_array(b)]);
        assert_eq!(snap.positions, [Pos { ms: 1, seq: 0 }, Pos::ZERO]);
        assert!(snapshot(2, 3, (both.clone(), positions.clone())).is_err());
        assert!(snapshot(3, 2, (both, positions)).is_err());
    }

    #[test]
    fn the_lua_constants_follow_the_rust_ones() {
        let lua = lua_constants();
        assert!(lua.ends_with(&format!("{LUA_CONSTANTS_END}\n")));
        assert!(lua.contains(&format!("local MAX_CHANNELS = {MAX_CHANNELS_PER_CONNECTION}\n")));
        assert!(lua.contains("local C, PM, PCL = 1, 5, 9\n"));
        assert!(lua.contains("local MODE_SLOTS = { { 1, 2 }, { 2, 3 }, { 4, 4 }, { 8, 6 }, { 16, 7 }, { 32, 8 } }\n"));
        assert!(lua.contains("local PRESENCE = 4\n"));
        assert!(lua.contains(&format!("local PACK = '<{}'\n", "I4".repeat(9))));
        assert!(lua.contains("local ST_OK, ST_NOT_PRESENCE_ATTACHED, ST_TOO_MANY_CHANNELS = 1, 2, 3\n"));
        assert!(lua.contains("local STATUS_BYTE = { '\\1', '\\2', '\\3' }\n"));
        assert!(lua.contains("local BUSY_FORMAT, BUSY_TOP, BUSY_NAME_AT = '%010d:', 4294967295, 12\n"));
        // STATUS_BYTE is indexed by status
        for (i, s) in STATUSES.iter().enumerate() {
            assert_eq!(usize::from(s.1), i + 1);
        }
    }

    #[test]
    fn the_busy_layout_rebuilds_busy_keys() {
        let (digits, separator, top) = busy_layout();
        for c in [0u32, 7, 4096, u32::MAX] {
            let lua = format!("{:0digits$}{separator}x", top - u64::from(c));
            assert_eq!(lua, busy_key(c, "x"));
            assert_eq!(name_of_busy_key(&lua), "x");
        }
    }

    #[test]
    fn apply_results_are_read_from_one_string_per_write() {
        let tok = Value::BulkString(b"18446744073709551615".to_vec());
        let done = |a: Applied| match a {
            Applied::Done { results, epoch } => (results, epoch),
            other => panic!("{other:?}"),
        };
        let (mut job, _rx) = crate::store::redis::writer::tests::job(2);
        // statuses only
        let (r, epoch) = done(write_results(&job, &Value::BulkString(vec![1, 3]), &tok).unwrap());
        assert_eq!(epoch, u64::MAX);
        assert_eq!(
            r.iter().map(|x| x.status).collect::<Vec<_>>(),
            [OpStatus::Ok, OpStatus::TooManyChannels]
        );
        assert!(r.iter().all(|x| x.metrics.is_none()));
        // no lease after the write
        let (_, epoch) = done(write_results(&job, &Value::BulkString(vec![1, 1]), &Value::Nil).unwrap());
        assert_eq!(epoch, 0);
        let (_, epoch) = done(write_results(&job, &Value::BulkString(vec![1, 1]), &Value::Boolean(false)).unwrap());
        assert_eq!(epoch, 0);
        // statuses each followed by the nine counters as stored
        job.include_metrics = true;
        let mut bytes = vec![2u8];
        bytes.extend(packed([1, 0, 0, 0, 0, 0, 0, 0, 7]));
        bytes.push(1);
        bytes.extend(packed([2, 0, 0, 0, 0, 0, 0, 0, 0]));
        let (r, _) = done(write_results(&job, &Value::BulkString(bytes.clone()), &tok).unwrap());
        assert_eq!(r[0].status, OpStatus::NotPresenceAttached);
        assert_eq!(r[0].metrics, Some(Metrics::from_array([1, 0, 0, 0, 0, 0, 0, 0, 7])));
        assert_eq!(r[1].status, OpStatus::Ok);
        assert_eq!(r[1].metrics, Some(Metrics::from_array([2, 0, 0, 0, 0, 0, 0, 0, 0])));
        // a length that does not fit is an error, not a guess
        assert!(write_results(&job, &Value::BulkString(bytes[..40].to_vec()), &tok).is_err());
        assert!(write_results(&job, &Value::BulkString(vec![1, 1]), &tok).is_err());
        // -1 only means stale for a sequenced write, -2 only a wrong epoch
        // for a write that named one
        assert!(write_results(&job, &Value::Int(-1), &tok).is_err());
        assert!(write_results(&job, &Value::Int(-2), &tok).is_err());
        job.sequence = 9;
        job.epoch = 3;
        assert_eq!(
            write_results(&job, &Value::Int(-1), &tok).unwrap(),
            Applied::Stale { epoch: u64::MAX }
        );
        assert_eq!(
            write_results(&job, &Value::Int(-2), &Value::Nil).unwrap(),
            Applied::WrongEpoch { epoch: 0 }
        );
        assert!(write_results(&job, &Value::Nil, &tok).is_err());
        assert!(write_results(&job, &Value::BulkString(vec![1, 1]), &Value::BulkString(b"x".to_vec())).is_err());
        // two values per write
        assert!(apply_results(std::slice::from_ref(&job), &[Value::Int(-1)]).is_err());
    }

    #[test]
    fn a_close_tells_what_it_retired() {
        assert_eq!(closed((None, SESSION_NOT_OWNER)).unwrap(), Closed::NotOwner);
        assert_eq!(closed((None, SESSION_UNKNOWN)).unwrap(), Closed::Nothing);
        assert_eq!(
            closed((Some("12".into()), SESSION_ALIVE)).unwrap(),
            Closed::Retired {
                token: "12".into(),
                epoch: Some(12)
            }
        );
        assert_eq!(
            closed((Some("12".into()), SESSION_UNKNOWN)).unwrap(),
            Closed::Retired {
                token: "12".into(),
                epoch: None
            }
        );
        assert!(closed((Some("x".into()), SESSION_ALIVE)).is_err());
    }
}
