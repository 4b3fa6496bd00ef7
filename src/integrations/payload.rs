//! What a target receives: the JSON body of an event or a batch, and the
//! Standard Webhooks headers that sign it (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of
//! id.timestamp.body>`), so receivers can verify with a published library.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use super::rule::Kind;
use super::store::{Entry, Staged};
use crate::domain::Metrics;

/// One event in a body.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventBody<'a> {
    /// `channel.occupancy`, `channel.occupied` or `channel.vacated`.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Unique per event and rule: the rule id, a colon and the queue
    /// position; increasing per rule, so receivers can drop repeats.
    pub id: String,
    /// The rule that sent it.
    pub rule_id: &'a str,
    /// The channel.
    pub channel: &'a str,
    /// When the change was committed, ms since the Unix epoch.
    pub timestamp: i64,
    /// The metrics after the change.
    pub data: Data,
}

/// An event's data.
#[derive(Debug, Serialize)]
pub struct Data {
    /// Every metric, Ably's camelCase names.
    pub metrics: Metrics,
}

/// A batched request's body.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchBody<'a> {
    /// Always `batch`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The rule that sent it.
    pub rule_id: &'a str,
    /// The events, in the order they happened per channel.
    pub items: Vec<EventBody<'a>>,
}

fn event<'a>(rule: &'a str, e: &'a Entry) -> EventBody<'a> {
    EventBody {
        kind: e.kind,
        id: format!("{rule}:{}", e.id),
        rule_id: rule,
        channel: &e.channel,
        timestamp: e.timestamp_ms,
        data: Data { metrics: e.metrics },
    }
}

/// The batch id (`webhook-id`) of a batch that starts with `first`.
pub fn batch_id(rule: &str, first: &Entry) -> String {
    format!("msg_{rule}_{}", first.id)
}

/// The request body of a staged batch: the one event in single mode
/// (`batched == false`), else a [`BatchBody`]. Built the same way on every
/// attempt and by every replica.
pub fn body(rule: &str, batch: &Staged, batched: bool) -> Vec<u8> {
    let out = if batched {
        serde_json::to_vec(&BatchBody {
            kind: "batch",
            rule_id: rule,
            items: batch.entries.iter().map(|e| event(rule, e)).collect(),
        })
    } else {
        match batch.entries.first() {
            Some(e) => serde_json::to_vec(&event(rule, e)),
            None => Ok(b"{}".to_vec()),
        }
    };
    // serialising plain structs of strings and numbers cannot fail
    out.unwrap_or_default()
}

/// The `webhook-signature` value for `id`, `timestamp` (seconds) and
/// `body` under `key` (the secret's decoded bytes).
pub fn signature(key: &[u8], id: &str, timestamp_s: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // the example of the Standard Webhooks specification
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn bodies_name_every_metric_in_camel_case() {
        let e = Entry {
            id: "5-0".into(),
            channel: "rooms:1".into(),
            kind: Kind::Occupied,
            flip: true,
            metrics: Metrics {
                connections: 1,
                presence_members: 1,
                ..Metrics::default()
            },
            timestamp_ms: 7,
        };
        let b = Staged {
            id: batch_id("rule_1", &e),
            entries: vec![e],
        };
        let v: serde_json::Value = serde_json::from_slice(&body("rule_1", &b, false)).unwrap();
        assert_eq!(v["type"], "channel.occupied");
        assert_eq!(v["id"], "rule_1:5-0");
        assert_eq!(v["data"]["metrics"]["presenceMembers"], 1);
        assert_eq!(v["data"]["metrics"]["objectSubscribers"], 0);
        let v: serde_json::Value = serde_json::from_slice(&body("rule_1", &b, true)).unwrap();
        assert_eq!(v["items"][0]["channel"], "rooms:1");
        assert_eq!(b.id, "msg_rule_1_5-0");
    }
}
