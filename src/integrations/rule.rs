//! Integration rules: what a rule is, how it is validated (every error
//! names its field, as in `domain::ids`), and which events of a change it
//! wants. No transport, no store.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::limits;
use crate::auth::capability::Pattern;
use crate::domain::ids::InvalidInput;
use crate::domain::metrics::Category;

/// The kinds of event a rule can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// `channel.occupancy`: the channel's metrics after a change.
    #[serde(rename = "channel.occupancy")]
    Occupancy,
    /// `channel.occupied`: the channel's first connection attached.
    #[serde(rename = "channel.occupied")]
    Occupied,
    /// `channel.vacated`: the channel's last connection left (sent after
    /// the rule's vacated delay, and not at all when the channel is
    /// occupied again within it).
    #[serde(rename = "channel.vacated")]
    Vacated,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 3] = [Kind::Occupancy, Kind::Occupied, Kind::Vacated];

    /// The event type in payloads and in the API (`channel.occupancy` …).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Occupancy => "channel.occupancy",
            Kind::Occupied => "channel.occupied",
            Kind::Vacated => "channel.vacated",
        }
    }

    /// Parses [`Kind::name`].
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// One bit per kind, as the stores receive a rule's wants.
    pub fn bit(self) -> u8 {
        match self {
            Kind::Occupancy => 1,
            Kind::Occupied => 2,
            Kind::Vacated => 4,
        }
    }

    /// The one-letter code the stores keep in queued entries.
    pub fn code(self) -> &'static str {
        match self {
            Kind::Occupancy => "o",
            Kind::Occupied => "+",
            Kind::Vacated => "-",
        }
    }

    /// Parses [`Kind::code`].
    pub fn from_code(code: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.code() == code)
    }
}

/// How a rule sends its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Mode {
    /// One request per event.
    Single,
    /// Requests of up to `max_events` events, at most one per
    /// `interval_ms` (and one in flight at a time).
    Batched {
        /// Most events in one request.
        max_events: u32,
        /// Least time between two requests' starts, ms.
        interval_ms: u64,
    },
}

/// An integration rule as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// `rule_` and 16 hex digits, chosen by the service.
    pub id: String,
    /// Free text for operators.
    pub description: String,
    /// Where events are POSTed (http or https).
    pub target: String,
    /// Channel patterns, as in key files: `*`, `rooms:*` or an exact
    /// name; a channel matching any of them is covered.
    pub channels: Vec<String>,
    /// The kinds wanted.
    pub events: Vec<Kind>,
    /// For occupancy events: send one only when one of these metrics
    /// changed (empty: on every change). Names as in the JSON payload
    /// (`presenceMembers`).
    pub categories: Vec<String>,
    /// Single or batched.
    pub mode: Mode,
    /// Occupancy events of a channel closer together than this are
    /// coalesced to the latest; 0 for none. A change to or from zero
    /// connections is never held back.
    pub debounce_ms: u64,
    /// How long a vacated event waits; re-occupation within it cancels
    /// both the vacated and the occupied event. 0 sends at once.
    pub vacated_delay_ms: u64,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// The Standard Webhooks signing secret, `whsec_` and base64.
    pub secret: String,
    /// How long an undelivered event is retried before it goes to the
    /// dead letters, ms.
    pub retention_ms: u64,
    /// Per request, ms.
    pub timeout_ms: u64,
    /// Requests in flight to the target at once (single mode).
    pub concurrency: u32,
    /// A paused rule takes no events and sends nothing.
    pub paused: bool,
    /// ms since the Unix epoch.
    pub created_ms: i64,
    /// ms since the Unix epoch.
    pub updated_ms: i64,
}

/// What a caller asks for when creating or updating a rule; `None` keeps
/// the default (create) or the current value (update).
#[derive(Debug, Clone, Default)]
pub struct RuleSpec {
    /// See [`Rule::description`].
    pub description: Option<String>,
    /// See [`Rule::target`].
    pub target: Option<String>,
    /// See [`Rule::channels`].
    pub channels: Option<Vec<String>>,
    /// Kind names (`channel.occupancy` …).
    pub events: Option<Vec<String>>,
    /// See [`Rule::categories`].
    pub categories: Option<Vec<String>>,
    /// `single` or `batched`.
    pub mode: Option<String>,
    /// Batched mode's most events per request.
    pub max_events: Option<u32>,
    /// Batched mode's least time between requests, ms.
    pub interval_ms: Option<u64>,
    /// See [`Rule::debounce_ms`].
    pub debounce_ms: Option<u64>,
    /// See [`Rule::vacated_delay_ms`].
    pub vacated_delay_ms: Option<u64>,
    /// See [`Rule::headers`].
    pub headers: Option<BTreeMap<String, String>>,
    /// See [`Rule::secret`]; generated when not given.
    pub secret: Option<String>,
    /// See [`Rule::retention_ms`].
    pub retention_ms: Option<u64>,
    /// See [`Rule::timeout_ms`].
    pub timeout_ms: Option<u64>,
    /// See [`Rule::concurrency`].
    pub concurrency: Option<u32>,
}

/// A new rule id.
pub fn new_id() -> String {
    format!("rule_{:016x}", rand::random::<u64>())
}

/// A new signing secret: `whsec_` and 24 random bytes in base64, as
/// Standard Webhooks libraries take it.
pub fn new_secret() -> String {
    format!("whsec_{}", STANDARD.encode(rand::random::<[u8; 24]>()))
}

/// The HMAC key inside a secret.
///
/// # Errors
/// When the secret is not `whsec_` and base64 of 16 to 64 bytes.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret
        .strip_prefix("whsec_")
        .ok_or("must start with whsec_ (Standard Webhooks secret format)")?;
    let key = STANDARD.decode(b64).map_err(|_| "must be whsec_ followed by base64")?;
    if !(16..=64).contains(&key.len()) {
        return Err(format!("must hold 16 to 64 bytes of key, got {}", key.len()));
    }
    Ok(key)
}

fn range<T: PartialOrd + std::fmt::Display + Copy>(field: &str, v: T, lo: T, hi: T) -> Result<T, InvalidInput> {
    if v < lo || v > hi {
        return Err(InvalidInput::new(field, format!("must be from {lo} to {hi}, got {v}")));
    }
    Ok(v)
}

fn check_target(url: &str) -> Result<(), InvalidInput> {
    let bad = |why: &str| InvalidInput::new("target", format!("{why}: {url:?}"));
    if url.len() > limits::MAX_URL_LEN {
        return Err(bad("is too long"));
    }
    let uri: http::Uri = url.parse().map_err(|_| bad("is not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("must be an http or https URL")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    Ok(())
}

fn check_channels(patterns: &[String]) -> Result<(), InvalidInput> {
    if patterns.is_empty() {
        return Err(InvalidInput::new(
            "channels",
            "must hold at least one pattern (`*` for all)",
        ));
    }
    if patterns.len() > limits::MAX_PATTERNS {
        return Err(InvalidInput::new(
            "channels",
            format!("must hold at most {} patterns", limits::MAX_PATTERNS),
        ));
    }
    for (i, p) in patterns.iter().enumerate() {
        let field = format!("channels[{i}]");
        // a pattern that no valid channel name can match is a mistake
        let name = p.strip_suffix('*').unwrap_or(p);
        if name.len() > crate::domain::limits::MAX_CHANNEL_LEN || p.chars().any(char::is_control) {
            return Err(InvalidInput::new(field, "matches no valid channel name"));
        }
        Pattern::parse(p).map_err(|e| InvalidInput::new(field, e))?;
    }
    Ok(())
}

fn check_headers(headers: &BTreeMap<String, String>) -> Result<(), InvalidInput> {
    if headers.len() > limits::MAX_HEADERS {
        return Err(InvalidInput::new(
            "headers",
            format!("must hold at most {} headers", limits::MAX_HEADERS),
        ));
    }
    for (name, value) in headers {
        let field = format!("headers[{name:?}]");
        let parsed = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| InvalidInput::new(&field, "is not a valid header name"))?;
        if limits::RESERVED_HEADERS.contains(&parsed.as_str()) || parsed.as_str().starts_with("webhook-") {
            return Err(InvalidInput::new(field, "is set by the service"));
        }
        http::HeaderValue::from_str(value).map_err(|_| InvalidInput::new(&field, "has an invalid value"))?;
    }
    Ok(())
}

/// The category of a JSON metric name (`presenceMembers`).
pub fn category_of(name: &str) -> Option<Category> {
    Category::ALL.into_iter().find(|c| json_name(*c) == name)
}

/// The JSON name of a metric.
pub fn json_name(c: Category) -> &'static str {
    match c {
        Category::Connections => "connections",
        Category::Publishers => "publishers",
        Category::Subscribers => "subscribers",
        Category::PresenceConnections => "presenceConnections",
        Category::PresenceMembers => "presenceMembers",
        Category::PresenceSubscribers => "presenceSubscribers",
        Category::ObjectPublishers => "objectPublishers",
        Category::ObjectSubscribers => "objectSubscribers",
        Category::PresenceClients => "presenceClients",
    }
}

impl Rule {
    /// A rule from `spec` with defaults for what it leaves out.
    ///
    /// # Errors
    /// [`InvalidInput`] naming the first bad field; nothing is kept.
    pub fn create(spec: RuleSpec, now_ms: i64) -> Result<Rule, InvalidInput> {
        let target = spec
            .target
            .clone()
            .ok_or_else(|| InvalidInput::new("target", "is required"))?;
        let base = Rule {
            id: new_id(),
            description: String::new(),
            target,
            channels: vec!["*".into()],
            events: vec![Kind::Occupancy],
            categories: Vec::new(),
            mode: Mode::Single,
            debounce_ms: 0,
            vacated_delay_ms: limits::DEFAULT_VACATED_DELAY_MS,
            headers: BTreeMap::new(),
            secret: new_secret(),
            retention_ms: limits::DEFAULT_RETENTION_MS,
            timeout_ms: limits::DEFAULT_TIMEOUT_MS,
            concurrency: limits::DEFAULT_CONCURRENCY,
            paused: false,
            created_ms: now_ms,
            updated_ms: now_ms,
        };
        base.updated(spec, now_ms)
    }

    /// This rule with `spec`'s fields changed.
    ///
    /// # Errors
    /// [`InvalidInput`] naming the first bad field.
    pub fn updated(&self, spec: RuleSpec, now_ms: i64) -> Result<Rule, InvalidInput> {
        let mut r = self.clone();
        if let Some(d) = spec.description {
            if d.len() > limits::MAX_DESCRIPTION_LEN {
                return Err(InvalidInput::new(
                    "description",
                    format!("must be at most {} bytes", limits::MAX_DESCRIPTION_LEN),
                ));
            }
            r.description = d;
        }
        if let Some(t) = spec.target {
            r.target = t;
        }
        check_target(&r.target)?;
        if let Some(c) = spec.channels {
            r.channels = c;
        }
        check_channels(&r.channels)?;
        if let Some(names) = spec.events {
            let mut kinds = Vec::new();
            for (i, n) in names.iter().enumerate() {
                let k = Kind::parse(n).ok_or_else(|| {
                    InvalidInput::new(
                        format!("events[{i}]"),
                        format!(
                            "unknown event {n:?} (expected channel.occupancy, channel.occupied or channel.vacated)"
                        ),
                    )
                })?;
                if !kinds.contains(&k) {
                    kinds.push(k);
                }
            }
            if kinds.is_empty() {
                return Err(InvalidInput::new("events", "must name at least one event"));
            }
            r.events = kinds;
        }
        if let Some(cats) = spec.categories {
            for (i, c) in cats.iter().enumerate() {
                if category_of(c).is_none() {
                    return Err(InvalidInput::new(
                        format!("categories[{i}]"),
                        format!("unknown metric {c:?} (expected a name such as presenceMembers)"),
                    ));
                }
            }
            r.categories = cats;
        }
        let (cur_max, cur_interval) = match r.mode {
            Mode::Batched {
                max_events,
                interval_ms,
            } => (max_events, interval_ms),
            Mode::Single => (limits::DEFAULT_MAX_EVENTS, limits::DEFAULT_INTERVAL_MS),
        };
        let batched = match spec.mode.as_deref() {
            None => matches!(r.mode, Mode::Batched { .. }) || spec.max_events.is_some() || spec.interval_ms.is_some(),
            Some("single") => false,
            Some("batched") => true,
            Some(other) => {
                return Err(InvalidInput::new(
                    "mode",
                    format!("unknown mode {other:?} (expected single or batched)"),
                ))
            }
        };
        r.mode = if batched {
            Mode::Batched {
                max_events: range("max_events", spec.max_events.unwrap_or(cur_max), 1, limits::MAX_EVENTS)?,
                interval_ms: range(
                    "interval_ms",
                    spec.interval_ms.unwrap_or(cur_interval),
                    limits::MIN_INTERVAL_MS,
                    limits::MAX_INTERVAL_MS,
                )?,
            }
        } else {
            if spec.max_events.is_some() || spec.interval_ms.is_some() {
                return Err(InvalidInput::new(
                    "mode",
                    "max_events and interval_ms need batched mode",
                ));
            }
            Mode::Single
        };
        if let Some(v) = spec.debounce_ms {
            r.debounce_ms = range("debounce_ms", v, 0, limits::MAX_DEBOUNCE_MS)?;
        }
        if let Some(v) = spec.vacated_delay_ms {
            r.vacated_delay_ms = range("vacated_delay_ms", v, 0, limits::MAX_VACATED_DELAY_MS)?;
        }
        if let Some(h) = spec.headers {
            check_headers(&h)?;
            r.headers = h;
        }
        if let Some(s) = spec.secret {
            secret_key(&s).map_err(|e| InvalidInput::new("secret", e))?;
            r.secret = s;
        }
        if let Some(v) = spec.retention_ms {
            r.retention_ms = range("retention_ms", v, limits::MIN_RETENTION_MS, limits::MAX_RETENTION_MS)?;
        }
        if let Some(v) = spec.timeout_ms {
            r.timeout_ms = range("timeout_ms", v, limits::MIN_TIMEOUT_MS, limits::MAX_TIMEOUT_MS)?;
        }
        if let Some(v) = spec.concurrency {
            r.concurrency = range("concurrency", v, 1, limits::MAX_CONCURRENCY)?;
        }
        r.updated_ms = now_ms;
        Ok(r)
    }

    /// Whether the rule covers `channel`.
    pub fn covers(&self, channel: &str) -> bool {
        self.channels
            .iter()
            .filter_map(|p| Pattern::parse(p).ok())
            .any(|p| p.matches(channel))
    }

    /// Whether it wants `kind`.
    pub fn wants(&self, kind: Kind) -> bool {
        self.events.contains(&kind)
    }

    /// The rule's wants as the stores take them: [`Kind::bit`]s, plus the
    /// occupied bit whenever vacated events wait (re-occupation must be
    /// seen to cancel them).
    pub fn want_bits(&self) -> u8 {
        let mut bits = self.events.iter().fold(0, |b, k| b | k.bit());
        if self.wants(Kind::Vacated) && self.vacated_delay_ms > 0 {
            bits |= Kind::Occupied.bit();
        }
        bits
    }

    /// The categories filter as a bit per [`Category::ALL`] index (0: every
    /// change).
    pub fn category_bits(&self) -> u16 {
        self.categories
            .iter()
            .filter_map(|c| category_of(c))
            .filter_map(|c| Category::ALL.iter().position(|x| *x == c))
            .fold(0, |b, i| b | (1 << i))
    }

    /// The rule with its secret hidden (for lists and reads).
    #[must_use]
    pub fn redacted(mut self) -> Rule {
        self.secret = String::new();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(target: &str) -> RuleSpec {
        RuleSpec {
            target: Some(target.into()),
            ..RuleSpec::default()
        }
    }

    #[test]
    fn defaults_and_bad_fields_are_named() {
        let r = Rule::create(spec("http://127.0.0.1:9/hook"), 5).unwrap();
        assert!(r.id.starts_with("rule_"));
        assert_eq!(r.mode, Mode::Single);
        assert!(secret_key(&r.secret).is_ok());
        let field = |s: RuleSpec| Rule::create(s, 0).unwrap_err().field;
        assert_eq!(field(spec("ftp://x/")), "target");
        assert_eq!(field(spec("not a url")), "target");
        assert_eq!(
            field(RuleSpec {
                channels: Some(vec!["a*b".into()]),
                ..spec("http://h/")
            }),
            "channels[0]"
        );
        assert_eq!(
            field(RuleSpec {
                events: Some(vec!["channel.occupancy".into(), "member.added".into()]),
                ..spec("http://h/")
            }),
            "events[1]"
        );
        assert_eq!(
            field(RuleSpec {
                max_events: Some(0),
                ..spec("http://h/")
            }),
            "max_events"
        );
        assert_eq!(
            field(RuleSpec {
                headers: Some([("webhook-id".to_string(), "x".to_string())].into()),
                ..spec("http://h/")
            }),
            "headers[\"webhook-id\"]"
        );
        assert_eq!(
            field(RuleSpec {
                secret: Some("nope".into()),
                ..spec("http://h/")
            }),
            "secret"
        );
    }

    #[test]
    fn filters_use_the_capability_rule() {
        let r = Rule::create(
            RuleSpec {
                channels: Some(vec!["rooms:*".into(), "lobby".into()]),
                ..spec("https://h/x")
            },
            0,
        )
        .unwrap();
        assert!(r.covers("rooms:1") && r.covers("lobby"));
        assert!(!r.covers("lobby2") && !r.covers("games:1"));
    }
}
