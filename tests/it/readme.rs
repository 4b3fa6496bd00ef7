//! The README walked through as written, on a copy of the repository's
//! files (as a fresh clone has them): every command of its `sh` blocks
//! that can run here runs, in order, against the real binary (on the
//! PATH, as `cargo install --path .` puts it), and its output has the
//! shape the README shows. A command the walk-through does not know fails
//! the test, so the README cannot grow steps nobody tried.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value as Json;
use tokio::process::Command;

use crate::support::certs::localhost_certificates;
use crate::support::command::run;
use crate::support::deps::{node_modules, python_deps};
use crate::support::process::{binary, stdout_of, Proc};

/// A command of the README and where it stands.
#[derive(Debug, Clone)]
struct Step {
    section: String,
    command: String,
    /// The ```json block right after the command's ```sh block, if the
    /// command ends that block.
    shown: Option<String>,
}

/// Every command of every ```sh block, multi-line ones joined (open quotes
/// and trailing backslashes), comments and blank lines left out.
fn steps(readme: &str) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::new();
    let mut section = String::new();
    let mut lines = readme.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(h) = line.strip_prefix("#") {
            section = h.trim_start_matches('#').trim().to_string();
            continue;
        }
        if line.trim() != "```sh" {
            continue;
        }
        let mut pending = String::new();
        let mut open_quote = false;
        let mut block = Vec::new();
        for l in lines.by_ref() {
            if l.trim() == "```" {
                break;
            }
            if pending.is_empty() && (l.trim().is_empty() || l.trim_start().starts_with('#')) {
                continue;
            }
            pending.push_str(l);
            pending.push('\n');
            open_quote = quote_open_after(open_quote, l);
            if !open_quote && !l.ends_with('\\') {
                block.push(std::mem::take(&mut pending).trim_end().to_string());
            }
        }
        assert!(pending.is_empty(), "unterminated command in {section}: {pending}");
        // a ```json block right after (blank lines and text allowed
        // between? no: only blank lines) shows the last command's output
        let mut shown = None;
        while lines.peek().is_some_and(|l| l.trim().is_empty()) {
            lines.next();
        }
        if lines.peek().is_some_and(|l| l.trim() == "```json") {
            lines.next();
            let mut json = String::new();
            for l in lines.by_ref() {
                if l.trim() == "```" {
                    break;
                }
                json.push_str(l);
                json.push('\n');
            }
            shown = Some(json);
        }
        let n = block.len();
        for (i, command) in block.into_iter().enumerate() {
            out.push(Step {
                section: section.clone(),
                command,
                shown: if i + 1 == n { shown.clone() } else { None },
            });
        }
    }
    out
}

/// Whether a single-quoted string is open at the end of `line`, given
/// whether one was open at its start (a `#` after a space outside quotes
/// starts a comment, whose apostrophes do not count).
fn quote_open_after(mut open: bool, line: &str) -> bool {
    let mut prev = ' ';
    for ch in line.chars() {
        if ch == '\'' {
            open = !open;
        } else if ch == '#' && !open && prev.is_whitespace() {
            break;
        }
        prev = ch;
    }
    open
}

/// The repository's tracked files copied to `to`, as a clone has them.
fn fresh_copy(to: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut git = std::process::Command::new("git");
    git.args(["ls-files", "-z"]).current_dir(root);
    let files = stdout_of(&mut git, "git ls-files");
    for name in files.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).to_string();
        let from = root.join(&name);
        if !from.is_file() {
            continue;
        }
        let dest = to.join(&name);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&from, &dest).unwrap_or_else(|e| panic!("copy {name}: {e}"));
    }
}

/// JSON objects printed one after another (grpcurl pretty-prints each
/// message; the CLI and the examples print one a line).
fn objects(text: &str) -> Vec<Json> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Json>()
        .map(|v| v.unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}")))
        .collect()
}

/// Whether the command streams until stopped (a subscription, a live
/// table, a count of events that the walk-through does not produce).
fn streams(command: &str) -> bool {
    command.contains("SubscribeOccupancy")
        || (command.contains(" watch ") && !command.contains("--count"))
        || command.contains("--count 10")
        || command.contains("subscribe rooms:lobby --count 5")
        || command.starts_with("curl -N")
}

/// Whether `text` is server-sent events (`curl -N` of an event stream).
fn is_sse(text: &str) -> bool {
    let t = text.trim_start();
    t.starts_with("data:") || t.starts_with("id:") || t.starts_with("event:") || t.starts_with(':')
}

/// The JSON `data` of each whole server-sent event in `text` (comments,
/// such as `: live` and `: heartbeat`, carry none).
fn sse_data(text: &str) -> Vec<Json> {
    let whole = text.rfind("\n\n").map_or("", |end| &text[..end]);
    whole
        .split("\n\n")
        .filter_map(|block| {
            let data: Vec<&str> = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            (!data.is_empty()).then(|| serde_json::from_str(&data.join("\n")).expect("an event's data is JSON"))
        })
        .collect()
}

/// Whether a streaming command's output so far holds a whole first
/// message: a JSON object, a JSON line, or a whole `watch` table.
fn has_a_whole_message(text: &str) -> bool {
    if text.trim_start().starts_with('{') {
        serde_json::Deserializer::from_str(text)
            .into_iter::<Json>()
            .next()
            .is_some_and(|r| r.is_ok())
    } else if is_sse(text) {
        !sse_data(text).is_empty()
    } else if text.contains("occupancy at") {
        text.contains("\n\n")
    } else {
        text.contains('\n')
    }
}

/// Runs a streaming command until it printed a whole first message (at
/// most 30 s), then stops it; returns (stdout, stderr, whether it exited
/// by itself with a failure).
async fn run_streaming(mut cmd: Command) -> (String, String, bool) {
    use tokio::io::AsyncReadExt;
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("start the command");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut failed = false;
    while !has_a_whole_message(&String::from_utf8_lossy(&text)) {
        match tokio::time::timeout_at(deadline, stdout.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => text.extend_from_slice(&buf[..n]),
            Ok(_) => {
                failed = !child.wait().await.is_ok_and(|s| s.success());
                break;
            }
            Err(_) => break,
        }
    }
    let _ = child.kill().await;
    let err = tokio::time::timeout(Duration::from_secs(5), err)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    (String::from_utf8_lossy(&text).to_string(), err, failed)
}

/// What each kind of command must print.
fn check(step: &Step, text: &str, stderr: &str) {
    let c = step.command.as_str();
    let ctx = || format!("{c}\nstdout:\n{text}\nstderr:\n{stderr}");
    assert!(!text.trim().is_empty(), "printed nothing: {}", ctx());
    if c.starts_with("grpcurl") && c.ends_with(" list") {
        assert!(text.contains("occupancy.v1.OccupancyService"), "{}", ctx());
    } else if c.starts_with("grpcurl") {
        let got = objects(text);
        if let Some(shown) = step.shown.as_deref() {
            match serde_json::from_str::<Json>(shown) {
                // the README's output, exactly
                Ok(expected) => assert_eq!(got[0], expected, "{}", ctx()),
                // an excerpt (ids elided): the same keys
                Err(_) => {
                    for key in ["event", "channel", "metrics", "id", "name"] {
                        assert!(shown.contains(key) && text.contains(key), "{key}: {}", ctx());
                    }
                }
            }
        }
        if c.contains("SubscribeOccupancy") {
            // events, and the stream's `live` marker or heartbeats
            assert!(
                got.iter().all(|o| o["event"]["name"] == "[meta]occupancy"
                    || o.get("live").is_some()
                    || o.get("heartbeat").is_some()),
                "{}",
                ctx()
            );
            assert!(got.iter().any(|o| o.get("event").is_some()), "{}", ctx());
        }
        if c.contains("ListChannels") {
            assert!(got[0]["channels"][0]["channelId"].is_string(), "{}", ctx());
        }
    } else if c.starts_with("occupancy key") {
        // the credential, then a key file entry
        assert!(
            text.contains("[keys.dash]") && text.contains("secret_sha256"),
            "{}",
            ctx()
        );
    } else if c.starts_with("occupancy --version") {
        assert!(text.starts_with("occupancy "), "{}", ctx());
    } else if c.starts_with("occupancy stats") {
        assert!(text.starts_with("active channels"), "{}", ctx());
    } else if c.starts_with("curl -N") {
        let events = sse_data(text);
        assert!(!events.is_empty(), "{}", ctx());
        for e in &events {
            assert_eq!(e["name"], "[meta]occupancy", "{}", ctx());
            assert!(e["data"]["metrics"].is_object(), "{}", ctx());
        }
    } else if c.starts_with("curl -si") {
        assert!(text.starts_with("HTTP/1.1 200"), "{}", ctx());
        assert!(text.contains("\"channelId\":\"rooms:lobby\""), "{}", ctx());
    } else if c.starts_with("curl") {
        let got: Json = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {}", ctx()));
        if c.contains("/stats") {
            assert!(got["activeChannels"].is_u64(), "{}", ctx());
        } else if c.contains("envelope=json") {
            assert_eq!(got["statusCode"], 200, "{}", ctx());
            assert!(
                got["response"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|o| o["channelId"] == "rooms:lobby")),
                "{}",
                ctx()
            );
        } else if c.contains("by=id") {
            assert!(
                got.as_array().is_some_and(|a| a.iter().any(|n| n == "rooms:lobby")),
                "{}",
                ctx()
            );
        } else if let Some(list) = got.as_array() {
            assert!(
                !list.is_empty() && list.iter().all(|o| o["channelId"].is_string()),
                "{}",
                ctx()
            );
        } else {
            assert_eq!(got["channelId"], "rooms:lobby", "{}", ctx());
        }
    } else if c.starts_with("occupancy health") {
        assert_eq!(text.trim(), "SERVING", "{}", ctx());
    } else if c.contains("--json") {
        for o in objects(text) {
            assert!(
                o["channelId"].is_string() || o["name"] == "[meta]occupancy",
                "{}",
                ctx()
            );
        }
    } else if c.starts_with("occupancy watch") {
        assert!(
            text.contains("occupancy at") && text.contains("CHANNEL") && text.contains("rooms:lobby"),
            "{}",
            ctx()
        );
    } else if c.starts_with("occupancy get") || c.starts_with("occupancy list --prefix") {
        assert!(text.starts_with("CHANNEL"), "{}", ctx());
        assert!(text.contains("rooms:lobby"), "{}", ctx());
    } else if c.starts_with("occupancy list --by id") {
        assert!(text.lines().any(|l| l == "rooms:lobby"), "{}", ctx());
    } else if c.starts_with("occupancy integrations create") {
        assert!(text.starts_with("id ") && text.contains("whsec_"), "{}", ctx());
    } else if c.starts_with("occupancy integrations list") {
        assert!(text.starts_with("ID ") && text.contains("rooms:*"), "{}", ctx());
    } else if c.starts_with("python3 examples/") || c.starts_with("node examples/") {
        for o in objects(text) {
            assert!(o["channelId"].is_string() || o["channel"].is_string(), "{}", ctx());
        }
    } else {
        unreachable!("{c}");
    }
}

/// The command without its leading `NAME=value` environment assignments.
fn without_env(command: &str) -> &str {
    let mut rest = command;
    while let Some((word, tail)) = rest.split_once(' ') {
        if word.contains('=') && word.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
            rest = tail.trim_start();
        } else {
            break;
        }
    }
    rest
}

/// A CA (`ca.pem`) and a certificate for localhost and 127.0.0.1 signed by
/// it (`cert.pem`, `key.pem`) in `dir`, as the README's Security section
/// assumes an operator has.
fn make_certificates(dir: &Path) {
    localhost_certificates(dir, "cert.pem", "key.pem");
}

/// The README's `occupancy serve …` of its Security section, on loopback:
/// its arguments with `--listen` dropped (the test listens on a free
/// loopback port, not on every interface) and its files found in `dir`.
fn secure_server(command: &str, dir: &Path) -> Proc {
    let mut args: Vec<String> = Vec::new();
    let mut words = command.split_whitespace().skip(2);
    while let Some(w) = words.next() {
        if w == "--listen" {
            words.next();
            continue;
        }
        let file = dir.join(w);
        args.push(if file.is_file() {
            file.to_str().unwrap().to_string()
        } else {
            w.to_string()
        });
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::spawn(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_works_as_written() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let steps = steps(&readme);
    assert!(steps.len() >= 15, "{steps:#?}");
    let clone = tempfile::tempdir().unwrap();
    fresh_copy(clone.path());
    // with the HTTP side on a free port, standing in for the README's
    // `occupancy --http-listen 8080 &`
    let p = Proc::spawn(&["--http-listen", "127.0.0.1:0"]);
    let addr = p.addr.to_string();
    let http_addr = p.http_addr().to_string();
    // `occupancy` on the PATH, as after `cargo install --path .`
    let bin_dir = Path::new(binary()).parent().unwrap().to_path_buf();
    let path = std::env::join_paths(
        std::iter::once(bin_dir).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    let mut python: Option<PathBuf> = None;
    // the Security section's server (key file and TLS) and the credential
    // its `occupancy key` printed
    let mut secure: Option<Proc> = None;
    let mut credential: Option<String> = None;
    let mut skipped: BTreeMap<String, &str> = BTreeMap::new();
    let mut ran = 0;
    for step in &steps {
        let c = without_env(step.command.as_str());
        let first = c.split_whitespace().next().unwrap_or("");
        let why_not = match first {
            "cargo" if c.starts_with("cargo run --release") || c.starts_with("cargo install") => {
                Some("a release build or install (the test's own build stands in)")
            }
            "scripts/test" => Some("the test suite itself"),
            "occupancy" if c.starts_with("occupancy --http-listen 8080 &") => {
                Some("the test's server, with its HTTP side on a free port, stands in")
            }
            "scripts/bench" => Some("release builds and minutes of load (bench-table.py is tested)"),
            _ => None,
        };
        if let Some(why) = why_not {
            skipped.insert(c.to_string(), why);
            continue;
        }
        if c.starts_with("occupancy serve ") && c.contains("--auth-keys") {
            // started here, on loopback, with the key file the step before
            // wrote and certificates made for it
            make_certificates(clone.path());
            secure = Some(secure_server(c, clone.path()));
            ran += 1;
            continue;
        }
        if c.starts_with("python3 -m pip install") {
            // the same requirements, installed under target/example-deps
            python = python_deps().await;
            if python.is_none() {
                skipped.insert(c.to_string(), "PyPI cannot be reached");
            }
            continue;
        }
        if c.starts_with("(cd examples/node && npm ci)") {
            if node_modules().await {
                #[cfg(unix)]
                std::os::unix::fs::symlink(
                    root.join("examples/node/node_modules"),
                    clone.path().join("examples/node/node_modules"),
                )
                .unwrap();
            } else {
                skipped.insert(c.to_string(), "the npm registry cannot be reached");
            }
            continue;
        }
        assert!(
            matches!(first, "grpcurl" | "occupancy" | "python3" | "node" | "curl"),
            "the README's walk-through does not know this command (section {:?}): {c}",
            step.section
        );
        if first == "python3" && python.is_none() {
            skipped.insert(c.to_string(), "no Python packages");
            continue;
        }
        if first == "node" && !clone.path().join("examples/node/node_modules").exists() {
            skipped.insert(c.to_string(), "no Node packages");
            continue;
        }
        // the README's address is the default one; the test's server is on
        // a free port
        let mut line = step
            .command
            .replace("127.0.0.1:50051", &addr)
            .replace("localhost:8080", &http_addr);
        if line.contains("occupancy.internal:50051") || line.contains("dash:SECRET") {
            // the Security section's server, reached by a name its
            // certificate holds, with the credential it was given
            let s = secure.as_ref().expect("the Security section starts its server first");
            line = line
                .replace("occupancy.internal:50051", &format!("localhost:{}", s.addr.port()))
                .replace(
                    "dash:SECRET",
                    credential.as_deref().expect("a credential from `occupancy key`"),
                );
        }
        if matches!(first, "python3" | "node") {
            // the examples take the address before their subcommand
            for script in ["occupancy_client.py", "occupancy-client.js"] {
                line = line.replace(&format!("{script} "), &format!("{script} --endpoint {addr} "));
            }
        }
        // exec: a streaming command stopped at its time limit is the
        // command itself, not a shell around it
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            // `NAME=value exec command`: the README's environment, then exec
            .arg({
                let rest = without_env(&line);
                format!("{}exec {rest}", &line[..line.len() - rest.len()])
            })
            .current_dir(clone.path())
            .env("PATH", &path)
            .env("OCCUPANCY_ENDPOINT", &addr)
            .env("PYTHONDONTWRITEBYTECODE", "1");
        if let Some(deps) = &python {
            cmd.env("PYTHONPATH", deps);
        }
        if streams(c) {
            let (stdout, stderr, failed) = run_streaming(cmd).await;
            assert!(!failed, "{c} failed:\n{stderr}");
            check(step, &stdout, &stderr);
        } else {
            let out = run(cmd, Duration::from_secs(60)).await;
            assert!(out.ok(), "{c} (section {:?}) failed: {}", step.section, out.describe());
            let bare = Step {
                command: c.to_string(),
                ..step.clone()
            };
            check(&bare, &out.stdout, &out.stderr);
            if c.starts_with("occupancy key") {
                // the key file the next step serves with; its second line
                // is the credential
                std::fs::write(clone.path().join("keys.toml"), &out.stdout).unwrap();
                credential = out
                    .stdout
                    .lines()
                    .nth(1)
                    .and_then(|l| l.strip_prefix("# "))
                    .map(str::to_string);
            }
        }
        ran += 1;
    }
    drop(secure);
    println!("ran {ran} README commands; not run here: {skipped:#?}");
    assert!(ran >= 15, "ran only {ran}");
}

#[test]
fn commands_are_read_whole() {
    let md = "# A\n\n```sh\n# a comment\ngrpcurl -d '{\"a\":1,\n  \"b\":2}' \\\n  host m\n\nocc get x   # Ably's note\nocc list\n```\n\n```json\n{\"x\": 1}\n```\n";
    let s = steps(md);
    assert_eq!(s.len(), 3, "{s:?}");
    assert_eq!(s[0].command, "grpcurl -d '{\"a\":1,\n  \"b\":2}' \\\n  host m");
    assert!(s[0].shown.is_none());
    assert_eq!(s[1].command, "occ get x   # Ably's note");
    assert_eq!(s[2].shown.as_deref(), Some("{\"x\": 1}\n"));
}
