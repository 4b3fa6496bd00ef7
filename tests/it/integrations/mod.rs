//! Integrations end to end: rules in the store, changes made through the
//! gRPC write API, and a real HTTP receiver on a loopback port that checks
//! every signature.

mod api;
mod delivery;
mod faults;
mod handover;
mod model;
mod python;
mod store;

use std::time::Duration;

use occupancy::integrations::{Rule, RuleSpec};
use occupancy::proto::v1::Mode as PbMode;
use occupancy::store::Store;
use serde_json::Value;

use crate::fixture::Fx;
use crate::support::receiver::Receiver;

/// The channel every test's rule covers and uses to know deliveries flow.
pub const PROBE: &str = "rooms:probe";

/// Creates a rule in the store (as the API does) for `receiver`, with
/// `spec`'s target set and the receiver told its secret; then waits until
/// a probe change on [`PROBE`] is delivered, so the replicas' sources and
/// workers run.
pub async fn rule_for(store: &dyn Store, fx: &Fx, receiver: &Receiver, mut spec: RuleSpec) -> Rule {
    spec.target = Some(receiver.url.clone());
    let rules = store.integrations().expect("integrations");
    let rule = Rule::create(spec, 0).expect("valid rule");
    rules.put_rule(&rule, true).await.expect("put rule");
    receiver.set_secret(&rule.secret);
    // attach until the probe's events flow: a source may start just after
    // the first change
    for i in 0..50 {
        let conn = format!("probe-{i}");
        fx.attach("probe-session", &conn, PROBE, &[PbMode::Subscribe]).await;
        if receiver
            .until(Duration::from_millis(300), |d| {
                d.iter().any(|(_, e)| e["channel"] == PROBE)
            })
            .await
        {
            return rule;
        }
    }
    panic!("no probe event delivered for rule {}", rule.id);
}

/// Delivered events of `channel` (the probe left out), in arrival order.
pub fn of(receiver: &Receiver, channel: &str) -> Vec<Value> {
    receiver
        .delivered()
        .into_iter()
        .map(|(_, e)| e)
        .filter(|e| e["channel"] == channel)
        .collect()
}

/// `(type, connections)` of events.
pub fn kinds(events: &[Value]) -> Vec<(String, u64)> {
    events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or("?").to_string(),
                e["data"]["metrics"]["connections"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect()
}
