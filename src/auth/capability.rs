//! Capabilities: which operations a credential may perform on which
//! channels, and the one matching rule for channel patterns.
//!
//! # Matching rule
//! A pattern is either `*` (every channel), a prefix followed by one `*`
//! at the very end (`rooms:*`: every channel whose name starts with
//! `rooms:`), or an exact channel name (no `*` anywhere). A `*` anywhere
//! but at the end is refused when the key file or token is read, so a
//! pattern never means something other than it looks like. A credential
//! may perform an operation on a channel when any of its patterns that
//! lists the operation matches the channel's name.
//!
//! A prefix (of a prefix subscription or a listing) is *covered* for an
//! operation when one `*` pattern holding the operation matches every
//! channel that can start with it: the pattern's own prefix is a prefix
//! of it. Exact names never cover a prefix.

use std::collections::BTreeMap;
use std::fmt;

/// What a capability allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// The write side: every `ConnectionService` call.
    Report,
    /// Reads: `GetOccupancy`, `BatchGetOccupancy`, `ListChannels`.
    Read,
    /// `SubscribeOccupancy`.
    Subscribe,
    /// What operators manage (integrations and the like).
    Admin,
}

impl Op {
    /// Every operation, in a fixed order.
    pub const ALL: [Op; 4] = [Op::Report, Op::Read, Op::Subscribe, Op::Admin];

    /// The name used in key files and tokens.
    pub fn name(self) -> &'static str {
        match self {
            Op::Report => "report",
            Op::Read => "read",
            Op::Subscribe => "subscribe",
            Op::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// Parses a name (`report`, `read`, `subscribe`, `admin`, or `*` for
    /// all of them) into a set of bits.
    fn parse_bits(name: &str) -> Result<u8, String> {
        match name {
            "*" => Ok(Op::ALL.iter().fold(0, |b, op| b | op.bit())),
            _ => Op::ALL
                .iter()
                .find(|op| op.name() == name)
                .map(|op| op.bit())
                .ok_or_else(|| format!("unknown operation {name:?} (expected report, read, subscribe, admin or *)")),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A channel pattern (see the module's matching rule); integration rules'
/// channel filters use the same rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Pattern {
    /// Channels starting with this (empty: every channel).
    Prefix(String),
    /// Exactly this channel.
    Exact(String),
}

impl Pattern {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("a channel pattern must not be empty".into());
        }
        match text.find('*') {
            None => Ok(Pattern::Exact(text.to_string())),
            Some(i) if i == text.len() - 1 => Ok(Pattern::Prefix(text[..i].to_string())),
            Some(_) => Err(format!(
                "channel pattern {text:?}: `*` may only end a pattern (`*`, `rooms:*` or an exact name)"
            )),
        }
    }

    pub(crate) fn matches(&self, channel: &str) -> bool {
        match self {
            Pattern::Prefix(p) => channel.starts_with(p.as_str()),
            Pattern::Exact(e) => channel == e,
        }
    }

    fn covers(&self, prefix: &str) -> bool {
        match self {
            Pattern::Prefix(p) => prefix.starts_with(p.as_str()),
            Pattern::Exact(_) => false,
        }
    }

    /// Whether some channel starting with `prefix` may match.
    fn meets(&self, prefix: &str) -> bool {
        match self {
            Pattern::Prefix(p) => prefix.starts_with(p.as_str()) || p.starts_with(prefix),
            Pattern::Exact(e) => e.starts_with(prefix),
        }
    }
}

/// A set of capabilities: channel patterns, each with the operations it
/// allows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    rules: Vec<(Pattern, u8)>,
}

impl Capabilities {
    /// Every operation on every channel.
    pub fn all() -> Self {
        Self {
            rules: vec![(Pattern::Prefix(String::new()), Op::parse_bits("*").unwrap_or(0))],
        }
    }

    /// Parses `{pattern: [operation, …]}` as written in key files and
    /// tokens.
    ///
    /// # Errors
    /// A message naming the bad pattern or operation.
    pub fn parse(map: &BTreeMap<String, Vec<String>>) -> Result<Self, String> {
        let mut rules = Vec::with_capacity(map.len());
        for (pattern, ops) in map {
            let p = Pattern::parse(pattern)?;
            let mut bits = 0;
            for op in ops {
                bits |= Op::parse_bits(op).map_err(|e| format!("channel pattern {pattern:?}: {e}"))?;
            }
            if bits != 0 {
                rules.push((p, bits));
            }
        }
        Ok(Self { rules })
    }

    /// Whether `op` is allowed on `channel`.
    pub fn may(&self, op: Op, channel: &str) -> bool {
        self.rules.iter().any(|(p, b)| b & op.bit() != 0 && p.matches(channel))
    }

    /// Whether `op` is allowed on every channel starting with `prefix`.
    pub fn covers(&self, op: Op, prefix: &str) -> bool {
        self.rules.iter().any(|(p, b)| b & op.bit() != 0 && p.covers(prefix))
    }

    /// Whether `op` is allowed on at least one channel starting with
    /// `prefix` (so a listing under it can find anything at all).
    pub fn meets(&self, op: Op, prefix: &str) -> bool {
        self.rules.iter().any(|(p, b)| b & op.bit() != 0 && p.meets(prefix))
    }

    /// Whether `op` is allowed on any channel at all.
    pub fn has(&self, op: Op) -> bool {
        self.rules.iter().any(|(_, b)| b & op.bit() != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(pairs: &[(&str, &[&str])]) -> Result<Capabilities, String> {
        let map = pairs
            .iter()
            .map(|(p, ops)| (p.to_string(), ops.iter().map(|o| o.to_string()).collect()))
            .collect();
        Capabilities::parse(&map)
    }

    #[test]
    fn patterns_match_by_the_one_rule() {
        let c = caps(&[
            ("rooms:*", &["read"]),
            ("lobby", &["read", "subscribe"]),
            ("*", &["report"]),
        ])
        .unwrap();
        assert!(c.may(Op::Read, "rooms:1"));
        assert!(c.may(Op::Read, "rooms:"));
        assert!(!c.may(Op::Read, "rooms"));
        assert!(!c.may(Op::Read, "games:1"));
        assert!(c.may(Op::Read, "lobby"));
        assert!(!c.may(Op::Read, "lobby2"));
        assert!(c.may(Op::Subscribe, "lobby"));
        assert!(!c.may(Op::Subscribe, "rooms:1"));
        assert!(c.may(Op::Report, "anything"));
        assert!(!c.may(Op::Admin, "anything"));
        assert!(c.has(Op::Read) && !c.has(Op::Admin));
    }

    #[test]
    fn prefixes_are_covered_only_by_star_patterns_above_them() {
        let c = caps(&[("rooms:*", &["subscribe"]), ("games:1", &["subscribe"])]).unwrap();
        assert!(c.covers(Op::Subscribe, "rooms:"));
        assert!(c.covers(Op::Subscribe, "rooms:eu:"));
        assert!(!c.covers(Op::Subscribe, "rooms"));
        assert!(!c.covers(Op::Subscribe, ""));
        assert!(!c.covers(Op::Subscribe, "games:1"));
        assert!(!c.covers(Op::Read, "rooms:"));
        assert!(caps(&[("*", &["*"])]).unwrap().covers(Op::Admin, ""));
        // meets: something under the prefix may be allowed
        assert!(c.meets(Op::Subscribe, ""));
        assert!(c.meets(Op::Subscribe, "ro"));
        assert!(c.meets(Op::Subscribe, "games:"));
        assert!(!c.meets(Op::Subscribe, "games:2"));
        assert!(!c.meets(Op::Subscribe, "x"));
    }

    #[test]
    fn bad_patterns_and_operations_are_named() {
        let e = caps(&[("ro*ms", &["read"])]).unwrap_err();
        assert!(e.contains("ro*ms"), "{e}");
        let e = caps(&[("rooms:*", &["write"])]).unwrap_err();
        assert!(e.contains("write") && e.contains("rooms:*"), "{e}");
        assert!(caps(&[("", &["read"])]).is_err());
        assert!(caps(&[("**", &["read"])]).is_err());
        // an empty operation list allows nothing
        assert!(!caps(&[("*", &[])]).unwrap().has(Op::Read));
    }
}
