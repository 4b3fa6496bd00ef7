//! What `occupancy integrations …` prints: a table or a block of fields
//! for people, one JSON object a line (camelCase, as the other commands)
//! with `--json`.

use std::time::{Duration, UNIX_EPOCH};

use occupancy_client::proto;
use serde_json::{json, Value};

use super::super::output::{metrics_json, outln};

fn batched(r: &proto::IntegrationRule) -> bool {
    r.mode == proto::DeliveryMode::Batched as i32
}

fn when(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn span(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

fn rule_json(r: &proto::IntegrationRule) -> Value {
    let headers: std::collections::BTreeMap<&String, &String> = r.headers.iter().collect();
    let mut v = json!({
        "id": r.id,
        "description": r.description,
        "target": r.target,
        "channels": r.channels,
        "events": r.events,
        "categories": r.categories,
        "mode": if batched(r) { "batched" } else { "single" },
        "debounceMs": r.debounce_ms,
        "vacatedDelayMs": r.vacated_delay_ms,
        "headers": headers,
        "retentionMs": r.retention_ms,
        "timeoutMs": r.timeout_ms,
        "concurrency": r.concurrency,
        "paused": r.paused,
        "createdMs": r.created_ms,
        "updatedMs": r.updated_ms,
        "backlog": r.backlog,
    });
    if batched(r) {
        v["maxEvents"] = json!(r.max_events);
        v["intervalMs"] = json!(r.interval_ms);
    }
    if !r.secret.is_empty() {
        v["secret"] = json!(r.secret);
    }
    v
}

fn list_or(v: &[String], none: &str) -> String {
    if v.is_empty() {
        none.to_string()
    } else {
        v.join(", ")
    }
}

/// One rule: JSON, or a block of `name  value` lines.
pub(super) fn rule(r: &proto::IntegrationRule, json: bool) {
    if json {
        outln!("{}", rule_json(r));
        return;
    }
    let mut headers: Vec<String> = r.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    headers.sort();
    let mode = if batched(r) {
        format!(
            "batched: up to {} events a request, one request per {}",
            r.max_events,
            span(r.interval_ms)
        )
    } else {
        format!("single: one request per event, {} in flight", r.concurrency)
    };
    let mut lines = vec![
        ("id", r.id.clone()),
        ("target", r.target.clone()),
        (
            "description",
            if r.description.is_empty() { "-" } else { &r.description }.to_string(),
        ),
        ("channels", list_or(&r.channels, "-")),
        ("events", list_or(&r.events, "-")),
        ("categories", list_or(&r.categories, "(every change)")),
        ("mode", mode),
        ("debounce", span(r.debounce_ms)),
        ("vacated delay", span(r.vacated_delay_ms)),
        ("headers", list_or(&headers, "(none)")),
        ("retention", span(r.retention_ms)),
        ("timeout", span(r.timeout_ms)),
        ("state", if r.paused { "paused" } else { "active" }.to_string()),
        ("backlog", r.backlog.to_string()),
        ("created", when(r.created_ms)),
        ("updated", when(r.updated_ms)),
    ];
    if !r.secret.is_empty() {
        lines.push((
            "secret",
            format!("{}  (shown only now: keep it to verify signatures)", r.secret),
        ));
    }
    for (k, v) in lines {
        outln!("{k:<15}{v}");
    }
}

/// Every rule: JSON lines, or a table.
pub(super) fn rules(rules: &[proto::IntegrationRule], json: bool) {
    if json {
        for r in rules {
            outln!("{}", rule_json(r));
        }
        return;
    }
    let rows: Vec<[String; 7]> = rules
        .iter()
        .map(|r| {
            let events: Vec<&str> = r
                .events
                .iter()
                .map(|e| e.strip_prefix("channel.").unwrap_or(e))
                .collect();
            [
                r.id.clone(),
                if r.paused { "paused" } else { "active" }.to_string(),
                if batched(r) { "batched" } else { "single" }.to_string(),
                events.join(","),
                r.channels.join(","),
                r.backlog.to_string(),
                r.target.clone(),
            ]
        })
        .collect();
    print_table(
        ["ID", "STATE", "MODE", "EVENTS", "CHANNELS", "BACKLOG", "TARGET"],
        &rows,
    );
}

fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let mut width = header.map(str::len);
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(width).enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        outln!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// A deleted rule.
pub(super) fn deleted(id: &str, json: bool) {
    if json {
        outln!("{}", json!({ "id": id, "deleted": true }));
    } else {
        outln!("deleted {id}");
    }
}

/// What a test send did; whether it was delivered.
pub(super) fn tested(t: &proto::TestRuleResponse, json: bool) -> bool {
    if json {
        outln!(
            "{}",
            json!({
                "delivered": t.delivered,
                "statusCode": t.status_code,
                "latencyMs": t.latency_ms,
                "error": t.error,
            })
        );
    } else if t.delivered {
        outln!("delivered: HTTP {} in {} ms", t.status_code, t.latency_ms);
    } else {
        outln!("not delivered: {} (after {} ms)", t.error, t.latency_ms);
    }
    t.delivered
}

/// Dead letters: JSON lines (with their events), or a table.
pub(super) fn dead_letters(dead: &[proto::DeadLetter], json: bool) {
    if json {
        for d in dead {
            let events: Vec<Value> = d
                .events
                .iter()
                .map(|e| {
                    json!({
                        "id": e.id,
                        "type": e.r#type,
                        "channel": e.channel,
                        "timestamp": e.timestamp_ms,
                        "metrics": metrics_json(&e.metrics.unwrap_or_default()),
                    })
                })
                .collect();
            outln!(
                "{}",
                json!({
                    "batchId": d.batch_id,
                    "events": events,
                    "reason": d.reason,
                    "attempts": d.attempts,
                    "deadMs": d.dead_ms,
                })
            );
        }
        return;
    }
    let rows: Vec<[String; 5]> = dead
        .iter()
        .map(|d| {
            [
                d.batch_id.clone(),
                d.events.len().to_string(),
                d.attempts.to_string(),
                when(d.dead_ms),
                d.reason.clone(),
            ]
        })
        .collect();
    print_table(["BATCH_ID", "EVENTS", "ATTEMPTS", "GIVEN_UP", "REASON"], &rows);
}

/// Events queued again.
pub(super) fn replayed(events: u64, json: bool) {
    if json {
        outln!("{}", json!({ "events": events }));
    } else {
        outln!("{events} events queued again");
    }
}
