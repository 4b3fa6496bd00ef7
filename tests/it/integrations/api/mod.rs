//! IntegrationService: rules created, read, updated, paused and deleted
//! with their secret shown only when set; bad fields refused by name with
//! nothing stored; test sends to a real local receiver, signed as
//! Standard Webhooks say (checked here with our own HMAC); admin-only
//! access; and the `occupancy integrations` CLI.
//!
//! Store-dependent tests run on both stores.

use std::collections::HashMap;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use occupancy::proto::v1 as pb;
use tonic::transport::Channel;
use tonic::Code;

use crate::support::{Harness, TestServer};

mod access;
mod cli;
mod send;

/// Session lease; no test here opens sessions.
const TTL: Duration = Duration::from_secs(30);

all_stores!(
    rules_round_trip,
    the_secret_is_shown_only_when_set,
    bad_fields_are_named_and_nothing_is_stored,
    unknown_ids_are_not_found,
    pause_and_resume,
    dead_letters_of_a_new_rule_are_empty,
);

type Ic = pb::integration_service_client::IntegrationServiceClient<Channel>;

async fn client(s: &TestServer) -> Ic {
    Ic::new(s.channel().await)
}

/// The id of a new rule with every default, its target a closed port.
async fn created<T>(c: &mut pb::integration_service_client::IntegrationServiceClient<T>) -> String
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    c.create_rule(create("http://127.0.0.1:9/"))
        .await
        .unwrap()
        .into_inner()
        .rule
        .unwrap()
        .id
}

fn create(target: &str) -> pb::CreateRuleRequest {
    pb::CreateRuleRequest {
        target: target.into(),
        ..Default::default()
    }
}

async fn list(c: &mut Ic) -> Vec<pb::IntegrationRule> {
    c.list_rules(pb::ListRulesRequest {}).await.unwrap().into_inner().rules
}

async fn get(c: &mut Ic, id: &str) -> pb::IntegrationRule {
    c.get_rule(pb::GetRuleRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .rule
        .unwrap()
}

/// The rule as a later read shows it: without secret and backlog.
fn stored(r: &pb::IntegrationRule) -> pb::IntegrationRule {
    pb::IntegrationRule {
        secret: String::new(),
        backlog: 0,
        ..r.clone()
    }
}

async fn rules_round_trip(h: Harness) {
    let s = h.server().await;
    let mut c = client(&s).await;
    assert!(list(&mut c).await.is_empty());
    let made = c
        .create_rule(pb::CreateRuleRequest {
            description: "presence dashboard".into(),
            target: "https://hooks.example/occupancy".into(),
            channels: vec!["rooms:*".into(), "lobby".into()],
            events: vec!["channel.occupied".into(), "channel.vacated".into()],
            categories: vec!["presenceMembers".into()],
            max_events: Some(10),
            interval_ms: Some(50),
            debounce_ms: Some(100),
            vacated_delay_ms: Some(0),
            headers: HashMap::from([("x-app".to_string(), "demo".to_string())]),
            retention_ms: Some(60_000),
            timeout_ms: Some(2_000),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .rule
        .unwrap();
    assert!(made.id.starts_with("rule_") && made.id.len() == 21, "{}", made.id);
    assert_eq!(made.target, "https://hooks.example/occupancy");
    assert_eq!(made.channels, ["rooms:*", "lobby"]);
    assert_eq!(made.events, ["channel.occupied", "channel.vacated"]);
    assert_eq!(made.categories, ["presenceMembers"]);
    // max_events alone makes the rule batched
    assert_eq!(made.mode, pb::DeliveryMode::Batched as i32);
    assert_eq!((made.max_events, made.interval_ms), (10, 50));
    assert_eq!((made.debounce_ms, made.vacated_delay_ms), (100, 0));
    assert_eq!(made.headers["x-app"], "demo");
    assert_eq!((made.retention_ms, made.timeout_ms), (60_000, 2_000));
    assert_eq!(made.concurrency, 8, "the default");
    assert!(!made.paused);
    assert!(made.created_ms > 0 && made.updated_ms == made.created_ms);

    // defaults of a rule that gives only its target
    let plain = c
        .create_rule(create("http://127.0.0.1:9/hook"))
        .await
        .unwrap()
        .into_inner()
        .rule
        .unwrap();
    assert_eq!(plain.channels, ["*"]);
    assert_eq!(plain.events, ["channel.occupancy"]);
    assert_eq!(plain.mode, pb::DeliveryMode::Single as i32);
    assert_eq!((plain.max_events, plain.interval_ms), (0, 0));
    assert_eq!(
        (plain.vacated_delay_ms, plain.retention_ms, plain.timeout_ms),
        (5_000, 300_000, 10_000)
    );

    assert_eq!(get(&mut c, &made.id).await, stored(&made));
    let mut want = vec![stored(&made), stored(&plain)];
    want.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(list(&mut c).await, want);

    // an update changes what it sets, and only that
    let updated = c
        .update_rule(pb::UpdateRuleRequest {
            id: made.id.clone(),
            target: Some("https://hooks.example/v2".into()),
            categories: Some(pb::StringList::default()),
            headers: Some(pb::HeaderMap::default()),
            mode: pb::DeliveryMode::Single as i32,
            concurrency: Some(2),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .rule
        .unwrap();
    let want = pb::IntegrationRule {
        target: "https://hooks.example/v2".into(),
        categories: vec![],
        headers: HashMap::new(),
        mode: pb::DeliveryMode::Single as i32,
        max_events: 0,
        interval_ms: 0,
        concurrency: 2,
        updated_ms: updated.updated_ms,
        ..stored(&made)
    };
    assert_eq!(updated, want);
    assert!(updated.updated_ms >= made.updated_ms);
    assert_eq!(get(&mut c, &made.id).await, want);

    c.delete_rule(pb::DeleteRuleRequest { id: made.id.clone() })
        .await
        .unwrap();
    assert_eq!(list(&mut c).await, [stored(&plain)]);
    let e = c
        .get_rule(pb::GetRuleRequest { id: made.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

async fn the_secret_is_shown_only_when_set(h: Harness) {
    let s = h.server().await;
    let mut c = client(&s).await;
    let made = c
        .create_rule(create("http://127.0.0.1:9/"))
        .await
        .unwrap()
        .into_inner()
        .rule
        .unwrap();
    let key = made.secret.strip_prefix("whsec_").expect("a Standard Webhooks secret");
    assert_eq!(STANDARD.decode(key).unwrap().len(), 24);
    let id = made.id.clone();
    assert_eq!(get(&mut c, &id).await.secret, "");
    assert!(list(&mut c).await.iter().all(|r| r.secret.is_empty()));
    let paused = c.pause_rule(pb::PauseRuleRequest { id: id.clone() }).await.unwrap();
    assert_eq!(paused.into_inner().rule.unwrap().secret, "");
    let changed = c
        .update_rule(pb::UpdateRuleRequest {
            id: id.clone(),
            description: Some("no new secret".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(changed.into_inner().rule.unwrap().secret, "");
    // a secret the caller chose: shown in that answer, then hidden again
    let mine = format!("whsec_{}", STANDARD.encode([7u8; 32]));
    let changed = c
        .update_rule(pb::UpdateRuleRequest {
            id: id.clone(),
            secret: Some(mine.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(changed.into_inner().rule.unwrap().secret, mine);
    assert_eq!(get(&mut c, &id).await.secret, "");
    // and the given secret is a created rule's too
    let given = c
        .create_rule(pb::CreateRuleRequest {
            secret: Some(mine.clone()),
            ..create("http://127.0.0.1:9/")
        })
        .await
        .unwrap();
    assert_eq!(given.into_inner().rule.unwrap().secret, mine);
}

/// Asserts that `r` failed with INVALID_ARGUMENT naming `field`.
fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, field: &str) {
    let e = r.expect_err(field);
    assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
    assert!(
        e.message().starts_with(&format!("invalid {field}:")),
        "expected field {field}: {:?}",
        e.message()
    );
}

async fn bad_fields_are_named_and_nothing_is_stored(h: Harness) {
    let s = h.server().await;
    let mut c = client(&s).await;
    let kept = c
        .create_rule(create("http://127.0.0.1:9/"))
        .await
        .unwrap()
        .into_inner()
        .rule
        .unwrap();
    let before = list(&mut c).await;
    let ok = || create("http://127.0.0.1:9/");
    let header = |k: &str| HashMap::from([(k.to_string(), "x".to_string())]);
    let cases = [
        (create("not a url"), "target"),
        (create("ftp://h/x"), "target"),
        (create(""), "target"),
        (
            pb::CreateRuleRequest {
                channels: vec!["a*b".into()],
                ..ok()
            },
            "channels[0]",
        ),
        (
            pb::CreateRuleRequest {
                events: vec!["member.added".into()],
                ..ok()
            },
            "events[0]",
        ),
        (
            pb::CreateRuleRequest {
                max_events: Some(0),
                ..ok()
            },
            "max_events",
        ),
        (
            pb::CreateRuleRequest {
                headers: header("webhook-signature"),
                ..ok()
            },
            "headers[\"webhook-signature\"]",
        ),
        (
            pb::CreateRuleRequest {
                headers: header("content-type"),
                ..ok()
            },
            "headers[\"content-type\"]",
        ),
        (
            pb::CreateRuleRequest {
                secret: Some("hunter2".into()),
                ..ok()
            },
            "secret",
        ),
        (pb::CreateRuleRequest { mode: 9, ..ok() }, "mode"),
    ];
    for (req, field) in cases {
        refused(c.create_rule(req).await, field);
    }
    assert_eq!(list(&mut c).await, before, "a refused create stores nothing");

    // a refused update changes nothing either, even its good fields
    let id = kept.id.clone();
    let update = |f: fn(&mut pb::UpdateRuleRequest)| {
        let mut r = pb::UpdateRuleRequest {
            id: id.clone(),
            description: Some("should not stick".into()),
            ..Default::default()
        };
        f(&mut r);
        r
    };
    let cases = [
        (
            update(|r| {
                r.channels = Some(pb::StringList {
                    values: vec!["*".into(), "a*b".into()],
                })
            }),
            "channels[1]",
        ),
        (update(|r| r.channels = Some(pb::StringList::default())), "channels"),
        (
            update(|r| {
                r.events = Some(pb::StringList {
                    values: vec!["nope".into()],
                })
            }),
            "events[0]",
        ),
        (update(|r| r.target = Some("mailto:x@y".into())), "target"),
        (update(|r| r.timeout_ms = Some(1)), "timeout_ms"),
        (update(|r| r.concurrency = Some(0)), "concurrency"),
    ];
    for (req, field) in cases {
        refused(c.update_rule(req).await, field);
    }
    assert_eq!(list(&mut c).await, before, "a refused update stores nothing");

    refused(
        c.list_dead_letters(pb::ListDeadLettersRequest {
            rule_id: id.clone(),
            limit: 1_001,
        })
        .await,
        "limit",
    );
    refused(
        c.test_rule(pb::TestRuleRequest {
            id: id.clone(),
            channel: "[meta]x".into(),
        })
        .await,
        "channel",
    );
}

async fn unknown_ids_are_not_found(h: Harness) {
    let s = h.server().await;
    let mut c = client(&s).await;
    let id = || "rule_00000000000000ff".to_string();
    let codes = [
        c.get_rule(pb::GetRuleRequest { id: id() }).await.map(drop),
        c.update_rule(pb::UpdateRuleRequest {
            id: id(),
            description: Some("x".into()),
            ..Default::default()
        })
        .await
        .map(drop),
        c.delete_rule(pb::DeleteRuleRequest { id: id() }).await.map(drop),
        c.pause_rule(pb::PauseRuleRequest { id: id() }).await.map(drop),
        c.resume_rule(pb::ResumeRuleRequest { id: id() }).await.map(drop),
        c.test_rule(pb::TestRuleRequest {
            id: id(),
            channel: String::new(),
        })
        .await
        .map(drop),
        c.list_dead_letters(pb::ListDeadLettersRequest {
            rule_id: id(),
            limit: 0,
        })
        .await
        .map(drop),
        c.replay_dead_letters(pb::ReplayDeadLettersRequest {
            rule_id: id(),
            batch_ids: vec![],
        })
        .await
        .map(drop),
    ];
    for (i, r) in codes.into_iter().enumerate() {
        let e = r.expect_err("unknown rule");
        assert_eq!(e.code(), Code::NotFound, "call {i}: {e:?}");
        assert!(e.message().contains("rule_00000000000000ff"), "call {i}: {e:?}");
    }
    refused(c.get_rule(pb::GetRuleRequest { id: String::new() }).await, "id");
    refused(
        c.replay_dead_letters(pb::ReplayDeadLettersRequest::default()).await,
        "rule_id",
    );
    assert!(list(&mut c).await.is_empty());
}

async fn pause_and_resume(h: Harness) {
    let s = h.server().await;
    let mut c = client(&s).await;
    let id = created(&mut c).await;
    for _ in 0..2 {
        // twice: pausing a paused rule is no error
        let r = c.pause_rule(pb::PauseRuleRequest { id: id.clone() }).await.unwrap();
        assert!(r.into_inner().rule.unwrap().paused);
        assert!(get(&mut c, &id).await.paused);
    }
    let r = c.resume_rule(pb::ResumeRuleRequest { id: id.clone() }).await.unwrap();
    assert!(!r.into_inner().rule.unwrap().paused);
    assert!(!get(&mut c, &id).await.paused);
}

async fn dead_letters_of_a_new_rule_are_empty(h: Harness) {
    let s = h.server().await;
    let mut c = client(&s).await;
    let id = created(&mut c).await;
    let dead = c
        .list_dead_letters(pb::ListDeadLettersRequest {
            rule_id: id.clone(),
            limit: 1_000,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(dead.dead_letters.is_empty());
    let replayed = c
        .replay_dead_letters(pb::ReplayDeadLettersRequest {
            rule_id: id,
            batch_ids: vec!["msg_none".into()],
        })
        .await
        .unwrap();
    assert_eq!(replayed.into_inner().events, 0);
}
