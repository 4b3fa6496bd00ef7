//! `occupancy integrations …` through the binary: every field as a flag,
//! tables and `--json`, the secret printed once, refusals naming the
//! field with exit 2, test sends, the key sent with every call, and real
//! dead letters listed and replayed.

use std::process::Output;
use std::sync::atomic::Ordering;

use super::send::Receiver;
use super::TTL;
use crate::cli::{json_lines, run};
use crate::support::Harness;

/// Runs the binary off the runtime's threads (the server under test runs
/// on them).
async fn occupancy(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args)
    })
    .await
    .expect("the CLI ran")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `args` followed by `--endpoint url`.
fn at<'a>(args: &[&'a str], url: &'a str) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.extend(["--endpoint", url]);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_lists_updates_and_deletes_rules() {
    let h = Harness::memory(TTL);
    let s = h.server().await;
    let url = s.url();
    let u = url.as_str();

    let out = occupancy(&at(
        &[
            "integrations",
            "create",
            "--target",
            "https://hooks.example/a",
            "--channel",
            "rooms:*",
            "--channel",
            "lobby",
            "--event",
            "channel.occupied",
            "--event",
            "channel.vacated",
            "--batched",
            "--max-events",
            "50",
            "--interval",
            "250ms",
            "--debounce",
            "1s",
            "--vacated-delay",
            "0s",
            "--header",
            "x-app=demo",
            "--retention",
            "2m",
            "--webhook-timeout",
            "3s",
            "--concurrency",
            "4",
            "--description",
            "from the cli",
            "--json",
        ],
        u,
    ))
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let made = json_lines(&out);
    assert_eq!(made.len(), 1);
    let a = &made[0];
    let id_a = a["id"].as_str().unwrap().to_string();
    assert_eq!(a["channels"], serde_json::json!(["rooms:*", "lobby"]));
    assert_eq!(a["events"], serde_json::json!(["channel.occupied", "channel.vacated"]));
    assert_eq!(a["mode"], "batched");
    assert_eq!(
        (a["maxEvents"].as_u64(), a["intervalMs"].as_u64()),
        (Some(50), Some(250))
    );
    assert_eq!(
        (a["debounceMs"].as_u64(), a["vacatedDelayMs"].as_u64()),
        (Some(1000), Some(0))
    );
    assert_eq!(a["headers"]["x-app"], "demo");
    assert_eq!(
        (a["retentionMs"].as_u64(), a["timeoutMs"].as_u64()),
        (Some(120_000), Some(3_000))
    );
    assert_eq!(
        (a["concurrency"].as_u64(), a["description"].as_str()),
        (Some(4), Some("from the cli"))
    );
    assert!(a["secret"].as_str().unwrap().starts_with("whsec_"));

    // for people: the secret is printed once, with a word about it
    let out = occupancy(&at(&["integrations", "create", "--target", "http://127.0.0.1:9/b"], u)).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let id_b = text
        .lines()
        .find_map(|l| l.strip_prefix("id"))
        .map(|v| v.trim().to_string())
        .expect("an id line");
    assert!(
        text.lines()
            .any(|l| l.starts_with("secret") && l.contains("whsec_") && l.contains("shown only now")),
        "{text}"
    );

    let out = occupancy(&at(&["integrations", "list", "--json"], u)).await;
    let listed = json_lines(&out);
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|r| r.get("secret").is_none()), "{listed:?}");
    let out = occupancy(&at(&["integrations", "list"], u)).await;
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("ID") && lines[0].contains("TARGET"), "{text}");
    assert_eq!(lines.len(), 3, "{text}");
    let row_a = lines.iter().find(|l| l.starts_with(&id_a)).expect("rule a listed");
    let cells: Vec<&str> = row_a.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            id_a.as_str(),
            "active",
            "batched",
            "occupied,vacated",
            "rooms:*,lobby",
            "0",
            "https://hooks.example/a"
        ]
    );

    let out = occupancy(&at(&["integrations", "get", &id_a, "--json"], u)).await;
    assert_eq!(
        json_lines(&out),
        listed
            .iter()
            .filter(|r| r["id"] == id_a.as_str())
            .cloned()
            .collect::<Vec<_>>()
    );

    let out = occupancy(&at(
        &["integrations", "update", &id_a, "--single", "--clear-headers", "--json"],
        u,
    ))
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let updated = &json_lines(&out)[0];
    assert_eq!(updated["mode"], "single");
    assert_eq!(updated["headers"], serde_json::json!({}));
    assert_eq!(updated["channels"], a["channels"], "the rest is kept");
    assert!(updated.get("maxEvents").is_none() && updated.get("secret").is_none());

    let out = occupancy(&at(&["integrations", "pause", &id_a], u)).await;
    assert!(stdout(&out)
        .lines()
        .any(|l| l.starts_with("state") && l.ends_with("paused")));

    // refused: exit 2 naming the field, nothing stored
    let out = occupancy(&at(
        &["integrations", "create", "--target", "http://h/", "--channel", "a*b"],
        u,
    ))
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("channels[0]"), "{}", stderr(&out));
    let out = occupancy(&at(&["integrations", "create", "--header", "novalue"], u)).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("NAME=VALUE"), "{}", stderr(&out));
    let out = occupancy(&at(&["integrations", "list", "--json"], u)).await;
    assert_eq!(json_lines(&out).len(), 2);

    // dead letters: none yet
    let out = occupancy(&at(&["integrations", "deliveries", &id_b, "--json"], u)).await;
    assert!(out.status.success() && out.stdout.is_empty(), "{}", stderr(&out));
    let out = occupancy(&at(&["integrations", "replay", &id_b], u)).await;
    assert_eq!(stdout(&out), "0 events queued again\n");

    let out = occupancy(&at(&["integrations", "delete", &id_a], u)).await;
    assert!(out.status.success());
    assert_eq!(stdout(&out), format!("deleted {id_a}\n"));
    let out = occupancy(&at(&["integrations", "delete", &id_a], u)).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no integration rule"), "{}", stderr(&out));
    let out = occupancy(&at(&["integrations", "list", "--json"], u)).await;
    let left = json_lines(&out);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["id"], id_b.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_test_command_says_what_the_target_answered() {
    let h = Harness::memory(TTL);
    let s = h.server().await;
    let url = s.url();
    let mut rx = Receiver::start().await;
    let out = occupancy(&at(&["integrations", "create", "--target", &rx.url, "--json"], &url)).await;
    let rule = &json_lines(&out)[0];
    let id = rule["id"].as_str().unwrap();
    let out = occupancy(&at(&["integrations", "test", id, "--channel", "rooms:9"], &url)).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("delivered: HTTP 204 in "), "{}", stdout(&out));
    let got = rx.next().await;
    let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["channel"], "rooms:9");
    rx.status.store(410, Ordering::Relaxed);
    let out = occupancy(&at(&["integrations", "test", id, "--json"], &url)).await;
    assert_eq!(out.status.code(), Some(1), "a failed test send exits 1");
    let v = &json_lines(&out)[0];
    assert_eq!(v["delivered"], false);
    assert_eq!(v["statusCode"], 410);
    assert_eq!(v["error"], "HTTP 410");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_its_key() {
    use crate::support::auth::{key_file_text, server, KeyFile, ADMIN, DASH};
    let h = Harness::memory(TTL);
    let keys = KeyFile::new(&key_file_text(""));
    let s = server(&h, &keys).await;
    let url = s.url();
    let out = occupancy(&at(&["integrations", "list", "--key", DASH], &url)).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("may not admin"), "{}", stderr(&out));
    let out = occupancy(&at(&["integrations", "list", "--key", ADMIN], &url)).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 1, "the header of an empty table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_and_replays_real_dead_letters() {
    use crate::support::receiver::{Behaviour, Receiver as Hook};
    use occupancy::integrations::RuleSpec;
    use occupancy::proto::v1::Mode as PbMode;
    use std::time::Duration;

    let h = Harness::memory(TTL);
    let s = h.server().await;
    let url = s.url();
    let u = url.as_str();
    let fx = crate::fixture::Fx::new(&s).await;
    let rx = Hook::start().await;
    let rule = super::super::rule_for(
        h.store().as_ref(),
        &fx,
        &rx,
        RuleSpec {
            channels: Some(vec!["rooms:*".into()]),
            events: Some(vec!["channel.occupied".into()]),
            ..RuleSpec::default()
        },
    )
    .await;
    // a client error is final: the batch becomes a dead letter at once
    rx.set(Behaviour::Status(410));
    fx.attach("s", "c1", "rooms:gone", &[PbMode::Subscribe]).await;
    let dead = crate::support::eventually(Duration::from_secs(15), "a dead letter in the CLI", || async {
        let out = occupancy(&at(&["integrations", "deliveries", &rule.id, "--json"], u)).await;
        let lines = json_lines(&out);
        (!lines.is_empty()).then_some(lines)
    })
    .await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    assert_eq!(
        (d["reason"].as_str(), d["attempts"].as_u64()),
        (Some("HTTP 410"), Some(1))
    );
    assert_eq!(d["events"][0]["channel"], "rooms:gone");
    assert_eq!(d["events"][0]["type"], "channel.occupied");
    let batch = d["batchId"].as_str().expect("a batch id");
    let out = occupancy(&at(&["integrations", "deliveries", &rule.id], u)).await;
    assert!(
        stdout(&out).contains(batch),
        "the table names the batch: {}",
        stdout(&out)
    );

    // replayed once the target accepts again: delivered, and gone from the list
    rx.set(Behaviour::Ok);
    let out = occupancy(&at(&["integrations", "replay", &rule.id, batch], u)).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "1 events queued again\n");
    rx.wait_for(Duration::from_secs(15), "the replayed event", |d| {
        d.iter().any(|(_, e)| e["channel"] == "rooms:gone")
    })
    .await;
    let out = occupancy(&at(&["integrations", "deliveries", &rule.id, "--json"], u)).await;
    assert!(out.status.success() && out.stdout.is_empty(), "{}", stdout(&out));
}
