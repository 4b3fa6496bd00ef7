//! Access control of IntegrationService: `admin` on every channel, or
//! PERMISSION_DENIED with nothing changed.

use occupancy::proto::v1 as pb;
use tonic::Code;

use super::{create, created, TTL};
use crate::support::Harness;

/// With keys, every call needs `admin` on every channel: a key with admin
/// on some channels only, or with other capabilities, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admin_of_every_channel_may_call() {
    use crate::support::auth::{key_entry, key_file_text, server, Bearer, KeyFile, ADMIN, DASH, FE};
    let h = Harness::memory(TTL);
    let keys = KeyFile::new(&key_file_text(&key_entry(
        "rooms-admin",
        "ra",
        r#"{ "rooms:*" = ["admin"] }"#,
    )));
    let s = server(&h, &keys).await;
    let ch = s.channel().await;
    let as_ = |cred: &str| {
        pb::integration_service_client::IntegrationServiceClient::with_interceptor(ch.clone(), Bearer::new(cred))
    };
    let mut admin = as_(ADMIN);
    let id = created(&mut admin).await;
    assert_eq!(
        admin
            .list_rules(pb::ListRulesRequest {})
            .await
            .unwrap()
            .into_inner()
            .rules
            .len(),
        1
    );
    for cred in [DASH, FE, "rooms-admin:ra"] {
        let mut c = as_(cred);
        let calls = [
            c.create_rule(create("http://127.0.0.1:9/")).await.map(drop),
            c.list_rules(pb::ListRulesRequest {}).await.map(drop),
            c.get_rule(pb::GetRuleRequest { id: id.clone() }).await.map(drop),
            c.update_rule(pb::UpdateRuleRequest {
                id: id.clone(),
                description: Some("x".into()),
                ..Default::default()
            })
            .await
            .map(drop),
            c.pause_rule(pb::PauseRuleRequest { id: id.clone() }).await.map(drop),
            c.resume_rule(pb::ResumeRuleRequest { id: id.clone() }).await.map(drop),
            c.test_rule(pb::TestRuleRequest {
                id: id.clone(),
                channel: String::new(),
            })
            .await
            .map(drop),
            c.list_dead_letters(pb::ListDeadLettersRequest {
                rule_id: id.clone(),
                limit: 0,
            })
            .await
            .map(drop),
            c.replay_dead_letters(pb::ReplayDeadLettersRequest {
                rule_id: id.clone(),
                batch_ids: vec![],
            })
            .await
            .map(drop),
            c.delete_rule(pb::DeleteRuleRequest { id: id.clone() }).await.map(drop),
        ];
        for (i, r) in calls.into_iter().enumerate() {
            let e = r.expect_err("refused");
            assert_eq!(e.code(), Code::PermissionDenied, "{cred} call {i}: {e:?}");
            assert!(e.message().contains("admin"), "{e:?}");
        }
    }
    let e = as_("").list_rules(pb::ListRulesRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // nothing the refused keys tried happened
    let rules = admin
        .list_rules(pb::ListRulesRequest {})
        .await
        .unwrap()
        .into_inner()
        .rules;
    assert_eq!(rules.len(), 1);
    assert_eq!((rules[0].description.as_str(), rules[0].paused), ("", false));
}
