//! IntegrationService messages as [`RuleSpec`]s and back. Validation is
//! the rule's own ([`Rule::create`], [`Rule::updated`], whose errors name
//! the request's fields); this only maps shapes: an unset field becomes
//! `None` (the default on create, the current value on update).

use std::collections::{BTreeMap, HashMap};

use crate::domain::InvalidInput;
use crate::integrations::{DeadLetter, Mode, Rule, RuleSpec};
use crate::proto::v1 as pb;

/// The spec of a CreateRule request: empty strings and lists are unset.
///
/// # Errors
/// [`InvalidInput`] naming `mode` for an unknown enum value.
pub(super) fn create_spec(r: pb::CreateRuleRequest) -> Result<RuleSpec, InvalidInput> {
    let non_empty = |v: Vec<String>| (!v.is_empty()).then_some(v);
    Ok(RuleSpec {
        description: (!r.description.is_empty()).then_some(r.description),
        target: (!r.target.is_empty()).then_some(r.target),
        channels: non_empty(r.channels),
        events: non_empty(r.events),
        categories: non_empty(r.categories),
        mode: mode_name(r.mode)?,
        max_events: r.max_events,
        interval_ms: r.interval_ms,
        debounce_ms: r.debounce_ms,
        vacated_delay_ms: r.vacated_delay_ms,
        headers: (!r.headers.is_empty()).then(|| sorted(r.headers)),
        secret: r.secret,
        retention_ms: r.retention_ms,
        timeout_ms: r.timeout_ms,
        concurrency: r.concurrency,
    })
}

/// The spec of an UpdateRule request: what is set, and only that.
///
/// # Errors
/// [`InvalidInput`] naming `mode` for an unknown enum value.
pub(super) fn update_spec(r: pb::UpdateRuleRequest) -> Result<RuleSpec, InvalidInput> {
    Ok(RuleSpec {
        description: r.description,
        target: r.target,
        channels: r.channels.map(|l| l.values),
        events: r.events.map(|l| l.values),
        categories: r.categories.map(|l| l.values),
        mode: mode_name(r.mode)?,
        max_events: r.max_events,
        interval_ms: r.interval_ms,
        debounce_ms: r.debounce_ms,
        vacated_delay_ms: r.vacated_delay_ms,
        headers: r.headers.map(|h| sorted(h.values)),
        secret: r.secret,
        retention_ms: r.retention_ms,
        timeout_ms: r.timeout_ms,
        concurrency: r.concurrency,
    })
}

fn sorted(h: HashMap<String, String>) -> BTreeMap<String, String> {
    h.into_iter().collect()
}

/// The [`RuleSpec::mode`] of a proto mode; `None` for unspecified.
fn mode_name(mode: i32) -> Result<Option<String>, InvalidInput> {
    match pb::DeliveryMode::try_from(mode) {
        Ok(pb::DeliveryMode::Unspecified) => Ok(None),
        Ok(pb::DeliveryMode::Single) => Ok(Some("single".into())),
        Ok(pb::DeliveryMode::Batched) => Ok(Some("batched".into())),
        Err(_) => Err(InvalidInput::new("mode", format!("unknown delivery mode {mode}"))),
    }
}

/// A rule as answered, with `backlog`; its secret is whatever `rule`
/// holds (callers redact it where the answer must not carry it).
pub(super) fn rule(rule: Rule, backlog: u64) -> pb::IntegrationRule {
    let (mode, max_events, interval_ms) = match rule.mode {
        Mode::Single => (pb::DeliveryMode::Single, 0, 0),
        Mode::Batched {
            max_events,
            interval_ms,
        } => (pb::DeliveryMode::Batched, max_events, interval_ms),
    };
    pb::IntegrationRule {
        id: rule.id,
        description: rule.description,
        target: rule.target,
        channels: rule.channels,
        events: rule.events.iter().map(|k| k.name().to_string()).collect(),
        categories: rule.categories,
        mode: mode as i32,
        max_events,
        interval_ms,
        debounce_ms: rule.debounce_ms,
        vacated_delay_ms: rule.vacated_delay_ms,
        headers: rule.headers.into_iter().collect(),
        secret: rule.secret,
        retention_ms: rule.retention_ms,
        timeout_ms: rule.timeout_ms,
        concurrency: rule.concurrency,
        paused: rule.paused,
        created_ms: rule.created_ms,
        updated_ms: rule.updated_ms,
        backlog,
    }
}

/// A dead letter of rule `rule_id` as answered; event ids as in payloads.
pub(super) fn dead_letter(rule_id: &str, d: DeadLetter) -> pb::DeadLetter {
    pb::DeadLetter {
        batch_id: d.batch.id,
        events: d
            .batch
            .entries
            .into_iter()
            .map(|e| pb::IntegrationEvent {
                id: format!("{rule_id}:{}", e.id),
                r#type: e.kind.name().to_string(),
                channel: e.channel,
                timestamp_ms: e.timestamp_ms,
                metrics: Some(e.metrics.into()),
            })
            .collect(),
        reason: d.reason,
        attempts: d.attempts,
        dead_ms: d.dead_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_fields_stay_unset() {
        let s = create_spec(pb::CreateRuleRequest {
            target: "http://h/".into(),
            vacated_delay_ms: Some(0),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.target.as_deref(), Some("http://h/"));
        assert_eq!(s.vacated_delay_ms, Some(0));
        assert!(s.channels.is_none() && s.events.is_none() && s.headers.is_none() && s.mode.is_none());
        let s = update_spec(pb::UpdateRuleRequest {
            id: "rule_1".into(),
            categories: Some(pb::StringList { values: vec![] }),
            headers: Some(pb::HeaderMap::default()),
            mode: pb::DeliveryMode::Batched as i32,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.categories, Some(vec![]));
        assert_eq!(s.headers, Some(BTreeMap::new()));
        assert_eq!(s.mode.as_deref(), Some("batched"));
        assert!(s.target.is_none() && s.channels.is_none() && s.secret.is_none());
        let bad = create_spec(pb::CreateRuleRequest {
            mode: 7,
            ..Default::default()
        });
        assert_eq!(bad.unwrap_err().field, "mode");
    }
}
