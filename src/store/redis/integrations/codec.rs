//! The integration scripts' arguments and replies: the flat argument list
//! of `enqueue.lua`, queue entries as stream fields, and JSON values.
//!
//! Numbers go to the scripts as canonical decimals (`u32`/`u64`
//! `Display`: no sign, no leading zeros), so the Lua side compares them as
//! strings, exactly (see `lua/integrations/enqueue.lua`).

use serde::de::DeserializeOwned;

use crate::domain::{Metrics, Pos};
use crate::error::{Error, Result};
use crate::integrations::store::{RuleRef, SourceEvent};
use crate::integrations::{Entry, Kind};

/// Metrics as the stores keep them: the nine counters in
/// [`Category::ALL`](crate::domain::metrics::Category::ALL) order, in
/// decimal, joined by commas.
pub(super) fn metrics_text(m: &Metrics) -> String {
    m.to_array().map(|v| v.to_string()).join(",")
}

/// Parses [`metrics_text`].
pub(super) fn parse_metrics(text: &str) -> Option<Metrics> {
    let mut values = [0u32; 9];
    let mut parts = text.split(',');
    for v in &mut values {
        *v = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then(|| Metrics::from_array(values))
}

/// `enqueue.lua`'s arguments after the version and the shard: the rules'
/// count and bits, then five values per change.
pub(super) fn enqueue_args(inv: &mut redis::ScriptInvocation<'_>, rules: &[RuleRef], events: &[SourceEvent]) {
    inv.arg(rules.len());
    for r in rules {
        inv.arg(r.wants).arg(r.categories);
    }
    for e in events {
        let covering: Vec<String> = e.rules.iter().map(u16::to_string).collect();
        inv.arg(e.pos.to_string())
            .arg(e.channel.as_str())
            .arg(metrics_text(&e.metrics))
            .arg(e.timestamp_ms)
            .arg(covering.join(","));
    }
}

/// A stream id in the canonical form XDEL and XRANGE take; `None` for what
/// is not one (the memory store ignores those too).
pub(super) fn stream_id(id: &str) -> Option<String> {
    Pos::parse(id).map(|p| p.to_string())
}

/// The entries of an XRANGE reply.
pub(super) fn entries(raw: Vec<(String, Vec<(String, String)>)>) -> Result<Vec<Entry>> {
    raw.into_iter().map(|(id, fields)| entry(id, &fields)).collect()
}

fn entry(id: String, fields: &[(String, String)]) -> Result<Entry> {
    let bad = |what: &str| Error::Internal(format!("integration queue entry {id}: {what}"));
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| bad(&format!("no field {name}")))
    };
    let kind = Kind::from_code(field("k")?).ok_or_else(|| bad("unknown kind"))?;
    let flip = match field("f")? {
        "1" => true,
        "0" => false,
        _ => return Err(bad("bad flip")),
    };
    let metrics = parse_metrics(field("m")?).ok_or_else(|| bad("bad metrics"))?;
    let timestamp_ms = field("t")?.parse().map_err(|_| bad("bad time"))?;
    let channel = field("c")?.to_string();
    Ok(Entry {
        id,
        channel,
        kind,
        flip,
        metrics,
        timestamp_ms,
    })
}

/// A value the store wrote as JSON.
pub(super) fn from_json<T: DeserializeOwned>(what: &str, text: &[u8]) -> Result<T> {
    serde_json::from_slice(text).map_err(|e| Error::Internal(format!("stored {what} is not valid: {e}")))
}

/// A value to store as JSON.
pub(super) fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Internal(format!("cannot encode as JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_round_trip() {
        let m = Metrics::from_array([1, 2, 3, 4, 5, 6, 7, 8, u32::MAX]);
        assert_eq!(metrics_text(&m), "1,2,3,4,5,6,7,8,4294967295");
        assert_eq!(parse_metrics(&metrics_text(&m)), Some(m));
        assert_eq!(parse_metrics("1,2"), None);
        assert_eq!(parse_metrics("1,2,3,4,5,6,7,8,9,10"), None);
        assert_eq!(parse_metrics("1,2,3,4,5,6,7,8,-1"), None);
    }

    #[test]
    fn stream_ids_are_canonical() {
        assert_eq!(stream_id("0012-03").as_deref(), Some("12-3"));
        assert_eq!(stream_id("nope"), None);
        assert_eq!(stream_id("1-"), None);
    }
}
