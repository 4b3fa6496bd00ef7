//! The README's receiver (examples/python/webhook_receiver.py, verifying
//! with the published `standardwebhooks` package) as a rule's target: it
//! accepts the service's signed events and rejects a forged one.

use std::process::Stdio;
use std::time::Duration;

use occupancy::integrations::rule::new_secret;
use occupancy::integrations::{Rule, RuleSpec};
use occupancy::proto::v1::Mode as PbMode;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::fixture::Fx;
use crate::support::deps::{python_deps, repo};
use crate::support::Harness;

const LINE_WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_receiver_verifies_and_prints_events() {
    let Some(deps) = python_deps().await else { return };
    let secret = new_secret();
    let mut child = Command::new("python3")
        .arg(repo().join("examples/python/webhook_receiver.py"))
        .args(["--port", "0"])
        .env("PYTHONPATH", &deps)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("OCCUPANCY_WEBHOOK_SECRET", &secret)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the python receiver");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(serde_json::from_str(&line).expect("a JSON line")).is_err() {
                break;
            }
        }
    });
    let mut next = async || -> Option<Value> { tokio::time::timeout(LINE_WAIT, rx.recv()).await.ok().flatten() };
    let port = next().await.expect("the receiver starts")["listening"]
        .as_u64()
        .expect("its port");
    let url = format!("http://127.0.0.1:{port}/hook");

    // a forged request is refused
    let forged = reqwest::Client::new()
        .post(&url)
        .header("webhook-id", "msg_1")
        .header(
            "webhook-timestamp",
            (occupancy::domain::events::wall_ms() / 1000).to_string(),
        )
        .header("webhook-signature", "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(forged.status(), 400);
    assert!(next().await.expect("a line").get("rejected").is_some());

    let h = Harness::memory(Duration::from_secs(30));
    let store = h.store();
    let server = crate::support::TestServer::start(h.config(), store.clone()).await;
    let fx = Fx::new(&server).await;
    let rule = Rule::create(
        RuleSpec {
            target: Some(url),
            channels: Some(vec!["rooms:*".into()]),
            events: Some(vec!["channel.occupied".into(), "channel.occupancy".into()]),
            secret: Some(secret),
            ..RuleSpec::default()
        },
        0,
    )
    .expect("rule");
    store.integrations().unwrap().put_rule(&rule, true).await.expect("put");
    // the source starts within its poll; attach until an event arrives
    let mut event = None;
    for i in 0..20 {
        fx.attach("s", &format!("c{i}"), "rooms:py", &[PbMode::Subscribe]).await;
        if let Ok(v) = tokio::time::timeout(Duration::from_millis(1_500), next()).await {
            event = v;
            break;
        }
    }
    let event = event.expect("an event reached the python receiver");
    assert_eq!(event["channel"], "rooms:py");
    assert_eq!(event["ruleId"], rule.id.as_str());
    assert!(event["data"]["metrics"]["connections"].as_u64().unwrap() >= 1);
}
