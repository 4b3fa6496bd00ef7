//! Channel enumeration: orders, queries, pages and their opaque cursors.
//!
//! A walk is a range scan over an ordered index of active channels, resumed
//! strictly after the last key returned. Because the cursor is a key and not
//! an offset, channels that come and go between pages never make a walk
//! fail, repeat a channel or skip one that stayed active.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::ids::{ChannelName, InvalidInput};
use super::limits::{MAX_CHANNEL_LEN, MAX_CURSOR_LEN};
use super::metrics::Metrics;

pub use super::limits::{DEFAULT_LIMIT, MAX_BATCH_GET, MAX_LIMIT};

/// Walk order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListOrder {
    /// Byte order of names.
    Name,
    /// Most connections first, ties by name.
    ConnectionsDesc,
}

impl ListOrder {
    fn tag(self) -> u8 {
        match self {
            ListOrder::Name => b'n',
            ListOrder::ConnectionsDesc => b'c',
        }
    }
}

/// The key of a channel in the busiest-first index: the inverted connection
/// count as ten digits, a `:`, then the name. Keys sort as the order wants:
/// most connections first, then by name.
pub fn busy_key(connections: u32, channel: &str) -> String {
    format!("{:010}:{channel}", u32::MAX - connections)
}

/// The channel name inside a [`busy_key`].
pub fn name_of_busy_key(key: &str) -> &str {
    key.get(11..).unwrap_or("")
}

/// A page request, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Only names starting with this.
    pub prefix: String,
    /// Page size, 1 to [`MAX_LIMIT`].
    pub limit: u32,
    /// Walk order.
    pub order: ListOrder,
    /// Index key to resume strictly after; `None` on the first page.
    pub after: Option<String>,
    /// Whether to return metrics (LIST_BY_VALUE) or names only.
    pub with_metrics: bool,
}

impl ListQuery {
    /// Validates a request's fields.
    ///
    /// # Errors
    /// [`InvalidInput`] naming `limit`, `prefix` or `cursor`.
    pub fn new(
        prefix: String,
        limit: u32,
        cursor: &str,
        order: ListOrder,
        with_metrics: bool,
    ) -> Result<Self, InvalidInput> {
        let limit = match limit {
            0 => DEFAULT_LIMIT,
            l if l > MAX_LIMIT => {
                return Err(InvalidInput::new(
                    "limit",
                    format!("must be at most {MAX_LIMIT}, got {l}"),
                ))
            }
            l => l,
        };
        if prefix.len() > MAX_CHANNEL_LEN {
            return Err(InvalidInput::new(
                "prefix",
                format!("must be at most {MAX_CHANNEL_LEN} bytes"),
            ));
        }
        if prefix.chars().any(char::is_control) {
            return Err(InvalidInput::new("prefix", "must not contain control characters"));
        }
        let after = if cursor.is_empty() {
            None
        } else {
            Some(decode_cursor(cursor, order)?)
        };
        Ok(Self {
            prefix,
            limit,
            order,
            after,
            with_metrics,
        })
    }

    /// Whether `name` is in the walk's prefix.
    pub fn matches(&self, name: &str) -> bool {
        name.starts_with(&self.prefix)
    }

    /// The name-index key a name-order walk starts from, inclusive, and
    /// whether it is inclusive: the prefix on the first page, else strictly
    /// after the cursor (or from the prefix, whichever is later).
    pub fn name_start(&self) -> (String, bool) {
        match &self.after {
            Some(after) if after.as_str() >= self.prefix.as_str() => (after.clone(), false),
            _ => (self.prefix.clone(), true),
        }
    }
}

/// One channel of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedChannel {
    /// The name.
    pub name: ChannelName,
    /// Its metrics, when asked for.
    pub metrics: Option<Metrics>,
}

/// One page of a walk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListPage {
    /// The channels, in walk order.
    pub channels: Vec<ListedChannel>,
    /// Cursor for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

const CURSOR_VERSION: u8 = 1;

/// Encodes the index key a walk resumes after as an opaque cursor.
pub fn encode_cursor(order: ListOrder, key: &str) -> String {
    let mut raw = Vec::with_capacity(key.len() + 2);
    raw.push(CURSOR_VERSION);
    raw.push(order.tag());
    raw.extend_from_slice(key.as_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

fn decode_cursor(cursor: &str, order: ListOrder) -> Result<String, InvalidInput> {
    let bad = |why: &str| InvalidInput::new("cursor", why.to_string());
    if cursor.len() > MAX_CURSOR_LEN {
        return Err(bad("is too long"));
    }
    let raw = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad("is not a cursor returned by ListChannels"))?;
    match raw.as_slice() {
        [CURSOR_VERSION, tag, key @ ..] => {
            if *tag != order.tag() {
                return Err(bad("belongs to a walk in another order"));
            }
            let key = std::str::from_utf8(key).map_err(|_| bad("is not a cursor returned by ListChannels"))?;
            if key.is_empty() || (order == ListOrder::ConnectionsDesc && key.len() < 12) {
                return Err(bad("is not a cursor returned by ListChannels"));
            }
            Ok(key.to_string())
        }
        _ => Err(bad("is not a cursor returned by ListChannels")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_keys_sort_busiest_first_then_by_name() {
        let mut keys = [
            busy_key(1, "b"),
            busy_key(5, "z"),
            busy_key(1, "a"),
            busy_key(u32::MAX, "m"),
            busy_key(0, "q"),
        ];
        keys.sort();
        let names: Vec<_> = keys.iter().map(|k| name_of_busy_key(k)).collect();
        assert_eq!(names, ["m", "z", "a", "b", "q"]);
    }

    #[test]
    fn cursor_round_trip_and_rejects() {
        let c = encode_cursor(ListOrder::Name, "room:1");
        let q = ListQuery::new(String::new(), 0, &c, ListOrder::Name, true).unwrap();
        assert_eq!(q.after.as_deref(), Some("room:1"));
        assert_eq!(q.limit, DEFAULT_LIMIT);
        let e = ListQuery::new(String::new(), 0, &c, ListOrder::ConnectionsDesc, true).unwrap_err();
        assert_eq!(e.field, "cursor");
        for bad in ["!!", "AAAA", "x"] {
            let e = ListQuery::new(String::new(), 0, bad, ListOrder::Name, true).unwrap_err();
            assert_eq!(e.field, "cursor", "{bad}");
        }
        let e = ListQuery::new(String::new(), 1001, "", ListOrder::Name, true).unwrap_err();
        assert_eq!(e.field, "limit");
    }

    #[test]
    fn name_start_respects_prefix_and_cursor() {
        let mut q = ListQuery::new("b".into(), 10, "", ListOrder::Name, false).unwrap();
        assert_eq!(q.name_start(), ("b".to_string(), true));
        q.after = Some("a".into());
        assert_eq!(q.name_start(), ("b".to_string(), true));
        q.after = Some("b1".into());
        assert_eq!(q.name_start(), ("b1".to_string(), false));
    }
}
