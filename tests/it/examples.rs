//! The Python and Node examples against a live server, and the proto lint.
//!
//! Each test installs what it needs when it is missing: the packages of
//! examples/python/requirements.txt under `target/example-deps/python`,
//! examples/node/node_modules with `npm ci`, and buf from npm under
//! `target/example-deps/buf`. Installs are built in a private staging
//! directory and renamed into place, so concurrent runs never see half an
//! install. A test skips, printing `skipping: <reason>`, only when its
//! install failed and the package registry cannot be reached; every other
//! failure fails it. Every child process is time-bound.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use occupancy::proto::v1 as pb;
use pb::Mode;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::fixture::{attach_op, Fx};
use crate::support::process::{binary, Proc};
use crate::support::{ReadClient, WriteClient};

/// The pinned buf release (npm `@bufbuild/buf`).
const BUF_VERSION: &str = "1.75.0";
/// Bound of one install (pip, npm).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Bound of a registry probe and of an "is it installed" check.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of one run of an example client or of buf, and of the wait for
/// each line a streaming client prints.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// What records which requirements an install was made from.
const STAMP: &str = ".requirements.txt";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_gets_lists_and_subscribes() {
    let Some(deps) = python_deps().await else { return };
    exercise(&Client::Python(deps)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_client_gets_lists_and_subscribes() {
    if !node_modules().await {
        return;
    }
    exercise(&Client::Node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proto_passes_buf_lint() {
    let Some(buf) = buf().await else { return };
    let mut cmd = Command::new(buf);
    cmd.arg("lint").current_dir(repo());
    let out = run(cmd, CLIENT_TIMEOUT).await;
    assert!(
        out.ok(),
        "buf lint (buf.yaml, STANDARD rules) failed:\n{}",
        out.describe()
    );
}

/// The same session for either client: get, list over several pages,
/// subscribe to named channels and to a prefix.
async fn exercise(client: &Client) {
    // leases outlive the test however slow the clients start
    let proc = Proc::spawn(&["--session-ttl", "10m"]);
    let addr = proc.addr.to_string();
    let ch = Channel::from_shared(proc.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let fx = Fx {
        r: ReadClient::new(ch.clone()),
        w: WriteClient::new(ch),
    };

    // get: one channel (GetOccupancy), then several (BatchGetOccupancy)
    fx.attach("fe", "c1", "rooms:a", &[Mode::Publish, Mode::Presence]).await;
    fx.attach("fe", "c2", "rooms:a", &[Mode::Subscribe]).await;
    fx.enter("fe", "c1", "rooms:a", "alice").await;
    let rooms_a = [
        ("connections", 2),
        ("publishers", 1),
        ("subscribers", 1),
        ("presenceConnections", 1),
        ("presenceMembers", 1),
        ("presenceSubscribers", 0),
        ("objectPublishers", 0),
        ("objectSubscribers", 0),
        ("presenceClients", 1),
    ];
    let got = client.lines(&addr, &["get", "rooms:a"]).await;
    assert_eq!(got.len(), 1, "{} get printed {got:?}", client.name());
    assert_details(&got[0], "rooms:a", true, &rooms_a);
    let got = client.lines(&addr, &["get", "rooms:none", "rooms:a"]).await;
    assert_eq!(got.len(), 2, "{} get of two printed {got:?}", client.name());
    assert_details(
        &got[0],
        "rooms:none",
        false,
        &[("connections", 0), ("presenceMembers", 0)],
    );
    assert_details(&got[1], "rooms:a", true, &rooms_a);

    // list: 150 channels are two pages at the default page size (100)
    let ops = (0..150)
        .map(|i| attach_op(&format!("l{i}"), &format!("many:{i:03}"), &[Mode::Subscribe]))
        .collect();
    assert_eq!(fx.apply("fe", ops).await.len(), 150);
    let want: Vec<String> = (0..150).map(|i| format!("many:{i:03}")).collect();
    for args in [
        &["list", "--prefix", "many:"][..],
        &["list", "--prefix", "many:", "--limit", "7"],
    ] {
        let listed = client.lines(&addr, args).await;
        assert_eq!(
            ids(&listed),
            want,
            "{} {args:?}: every channel once, in name order",
            client.name()
        );
        for d in &listed {
            let id = str_at(d, &["channelId"]);
            assert_details(
                d,
                &id,
                true,
                &[("connections", 1), ("subscribers", 1), ("publishers", 0)],
            );
        }
    }
    let everything = client.lines(&addr, &["list"]).await;
    let mut want_all = want.clone();
    want_all.push("rooms:a".into()); // byte order: 'm' < 'r'
    assert_eq!(ids(&everything), want_all, "{} list without a prefix", client.name());

    // subscribe: the snapshot, then a change made while the client runs
    let mut sub = Stream::start(client, &addr, &["subscribe", "rooms:a", "--count", "2"]);
    let snapshot = sub.next().await;
    assert_event(&snapshot, "rooms:a", &[("connections", 2), ("presenceMembers", 1)]);
    fx.attach("fe", "c3", "rooms:a", &[Mode::ObjectSubscribe]).await;
    let change = sub.next().await;
    assert_event(&change, "rooms:a", &[("connections", 3), ("objectSubscribers", 1)]);
    assert_ne!(str_at(&snapshot, &["id"]), str_at(&change, &["id"]), "event ids differ");
    sub.finish().await;

    // subscribe to a prefix: a channel that appears after the call (or, if
    // the attach wins the race, in the snapshot: either way the first event)
    let mut sub = Stream::start(client, &addr, &["subscribe", "--prefix", "late:", "--count", "1"]);
    fx.attach("fe", "c4", "late:x", &[Mode::Publish]).await;
    let event = sub.next().await;
    assert_event(&event, "late:x", &[("connections", 1), ("publishers", 1)]);
    sub.finish().await;

    // a front end following the session rule: it attaches, its session is
    // lost (closed behind its back), and its next KeepAlive re-sends its
    // state; the end of its input closes the session
    let (mut fe, mut input) = Stream::start_with_input(client, &addr, &["front-end", "fe-ex", "cx", "fe:a", "fe:b"]);
    let mut first = String::new();
    for ch in ["fe:a", "fe:b"] {
        let line = fe.next().await;
        assert_eq!(str_at(&line, &["call"]), "attach", "{line:?}");
        assert_eq!(str_at(&line, &["channel"]), ch, "{line:?}");
        assert_eq!(line.at(&["resynced"]).as_bool(), Some(false), "{line:?}");
        let epoch = str_at(&line, &["sessionEpoch"]);
        assert_ne!(epoch, "0", "{line:?}");
        assert!(first.is_empty() || first == epoch, "one lease: {line:?}");
        first = epoch;
    }
    assert_eq!(fx.get("fe:a").await[0], 1);
    assert!(fx.close("fe-ex").await);
    assert_eq!(fx.get("fe:b").await, [0; 9]);
    use tokio::io::AsyncWriteExt;
    input.write_all(b"\n").await.expect("write to the client");
    input.flush().await.expect("flush");
    let line = fe.next().await;
    assert_eq!(str_at(&line, &["call"]), "keepAlive", "{line:?}");
    assert_eq!(str_at(&line, &["status"]), "SESSION_STATUS_UNKNOWN", "{line:?}");
    assert_eq!(line.at(&["resynced"]).as_bool(), Some(true), "{line:?}");
    assert_ne!(str_at(&line, &["sessionEpoch"]), first, "a new lease: {line:?}");
    assert_eq!(fx.get("fe:a").await[0], 1, "{} restored its state", client.name());
    assert_eq!(fx.get("fe:b").await[0], 1);
    drop(input);
    fe.finish().await;
    assert_eq!(fx.get("fe:a").await, [0; 9], "closed at the end of its input");
}

/// Asserts a printed ChannelDetails.
fn assert_details(d: &Json, channel: &str, active: bool, metrics: &[(&str, u64)]) {
    assert_eq!(str_at(d, &["channelId"]), channel, "{d:?}");
    assert_eq!(
        d.at(&["status", "isActive"]).as_bool(),
        Some(active),
        "isActive of {d:?}"
    );
    let m = d.at(&["status", "occupancy", "metrics"]);
    for (name, want) in metrics {
        assert_eq!(m[*name].as_u64(), Some(*want), "{name} of {d:?}");
    }
}

/// Asserts a printed OccupancyEvent.
fn assert_event(e: &Json, channel: &str, metrics: &[(&str, u64)]) {
    assert_eq!(str_at(e, &["name"]), "[meta]occupancy", "{e:?}");
    assert_eq!(str_at(e, &["channel"]), channel, "{e:?}");
    assert!(!str_at(e, &["id"]).is_empty(), "{e:?}");
    let ts = str_at(e, &["timestampMs"]); // int64: a string in proto JSON
    assert!(ts.parse::<u64>().is_ok_and(|t| t > 0), "timestampMs of {e:?}");
    for (name, want) in metrics {
        assert_eq!(e.at(&["metrics", name]).as_u64(), Some(*want), "{name} of {e:?}");
    }
}

fn str_at(j: &Json, path: &[&str]) -> String {
    j.at(path)
        .as_str()
        .unwrap_or_else(|| panic!("no string at {path:?} in {j:?}"))
        .to_string()
}

fn ids(list: &[Json]) -> Vec<String> {
    list.iter().map(|d| str_at(d, &["channelId"])).collect()
}

/// One of the example clients.
enum Client {
    /// examples/python, with its packages in this directory.
    Python(PathBuf),
    /// examples/node.
    Node,
}

impl Client {
    fn name(&self) -> &'static str {
        match self {
            Client::Python(_) => "python client",
            Client::Node => "node client",
        }
    }

    fn command(&self, addr: &str, args: &[&str]) -> Command {
        let mut cmd = match self {
            Client::Python(deps) => {
                let mut c = Command::new("python3");
                c.arg(repo().join("examples/python/occupancy_client.py"))
                    .env("PYTHONPATH", deps)
                    .env("PYTHONDONTWRITEBYTECODE", "1");
                c
            }
            Client::Node => {
                let mut c = Command::new("node");
                c.arg(repo().join("examples/node/occupancy-client.js"));
                c
            }
        };
        cmd.arg("--endpoint").arg(addr).args(args);
        cmd
    }

    /// Runs the client to completion and parses each line it printed.
    async fn lines(&self, addr: &str, args: &[&str]) -> Vec<Json> {
        let out = run(self.command(addr, args), CLIENT_TIMEOUT).await;
        assert!(out.ok(), "{} {args:?} failed:\n{}", self.name(), out.describe());
        out.stdout
            .lines()
            .map(|l| {
                <Json as JsonPath>::parse(l).unwrap_or_else(|e| panic!("{} printed {l:?}: not JSON ({e})", self.name()))
            })
            .collect()
    }
}

/// A streaming client whose lines are read as they come.
struct Stream {
    what: String,
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    stderr: JoinHandle<String>,
}

impl Stream {
    fn start(client: &Client, addr: &str, args: &[&str]) -> Self {
        Self::spawn(client, addr, args, Stdio::null())
    }

    /// A client reading what the test writes to the returned input.
    fn start_with_input(client: &Client, addr: &str, args: &[&str]) -> (Self, tokio::process::ChildStdin) {
        let mut s = Self::spawn(client, addr, args, Stdio::piped());
        let input = s.child.stdin.take().expect("stdin");
        (s, input)
    }

    fn spawn(client: &Client, addr: &str, args: &[&str], stdin: Stdio) -> Self {
        let mut cmd = client.command(addr, args);
        cmd.stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", client.name()));
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let stderr = tokio::spawn(read_all(child.stderr.take().expect("stderr")));
        Self {
            what: format!("{} {args:?}", client.name()),
            child,
            lines,
            stderr,
        }
    }

    /// The next line, parsed; fails after CLIENT_TIMEOUT.
    async fn next(&mut self) -> Json {
        match tokio::time::timeout(CLIENT_TIMEOUT, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => <Json as JsonPath>::parse(&line)
                .unwrap_or_else(|e| panic!("{} printed {line:?}: not JSON ({e})", self.what)),
            Ok(Ok(None)) => {
                let stderr = self.stop().await;
                panic!("{} ended its output early; stderr:\n{stderr}", self.what)
            }
            Ok(Err(e)) => panic!("reading {}: {e}", self.what),
            Err(_) => {
                let stderr = self.stop().await;
                panic!(
                    "{} printed nothing within {CLIENT_TIMEOUT:?}; stderr:\n{stderr}",
                    self.what
                )
            }
        }
    }

    /// Kills the client and returns what it printed on stderr.
    async fn stop(&mut self) -> String {
        let _ = self.child.kill().await;
        match tokio::time::timeout(Duration::from_secs(5), &mut self.stderr).await {
            Ok(Ok(s)) => s,
            _ => "(unavailable)".into(),
        }
    }

    /// Waits for the client to exit on its own (it was given --count, or
    /// its input ended), and checks it succeeded without printing anything
    /// more.
    async fn finish(mut self) {
        let status = match tokio::time::timeout(CLIENT_TIMEOUT, self.child.wait()).await {
            Ok(s) => s.expect("wait"),
            Err(_) => {
                let stderr = self.stop().await;
                panic!(
                    "{} did not exit within {CLIENT_TIMEOUT:?} after its last event; stderr:\n{stderr}",
                    self.what
                )
            }
        };
        let stderr = self.stop().await;
        assert!(
            status.success(),
            "{} exited with {status}; stderr:\n{stderr}",
            self.what
        );
        let rest = tokio::time::timeout(Duration::from_secs(5), self.lines.next_line()).await;
        assert!(
            matches!(rest, Ok(Ok(None))),
            "{} printed more than --count events: {rest:?}",
            self.what
        );
    }
}

// ---- child processes ----

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/example-deps`, next to the profile directory of the binary
/// under test (so a custom CARGO_TARGET_DIR is followed).
fn deps_root() -> PathBuf {
    Path::new(binary())
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join("example-deps"))
        .unwrap_or_else(|| repo().join("target/example-deps"))
}

/// What a finished (or timed out) child printed.
pub(crate) struct Output {
    what: String,
    /// None when it was killed for running too long.
    pub(crate) status: Option<ExitStatus>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Output {
    pub(crate) fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub(crate) fn describe(&self) -> String {
        let status = match self.status {
            Some(s) => s.to_string(),
            None => "killed: still running after its time limit".into(),
        };
        format!(
            "$ {}\n{status}\n--- stdout\n{}\n--- stderr\n{}",
            self.what, self.stdout, self.stderr
        )
    }

    /// The first line of its output that reports an error, else the last
    /// line; at most 300 characters.
    fn reason(&self) -> String {
        if self.status.is_none() {
            return "timed out".into();
        }
        let text = format!("{}\n{}", self.stderr, self.stdout);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.contains("Unknown user config") && !l.contains("complete log"))
            .collect();
        let line = lines
            .iter()
            .find(|l| l.to_ascii_lowercase().contains("error"))
            .or(lines.last())
            .map_or("no output", |l| l);
        line.chars().take(300).collect()
    }
}

async fn read_all(mut r: impl AsyncRead + Unpin) -> String {
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// Runs `cmd` to completion, killing it after `limit`. Fails the test only
/// when it cannot be started at all.
pub(crate) async fn run(mut cmd: Command, limit: Duration) -> Output {
    let what = format!("{:?}", cmd.as_std());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let stdout = tokio::spawn(read_all(child.stdout.take().expect("stdout")));
    let stderr = tokio::spawn(read_all(child.stderr.take().expect("stderr")));
    let status = match tokio::time::timeout(limit, child.wait()).await {
        Ok(s) => Some(s.unwrap_or_else(|e| panic!("wait for {what}: {e}"))),
        Err(_) => {
            let _ = child.kill().await;
            None
        }
    };
    // a grandchild may still hold the pipes: do not wait for it forever
    let grace = Duration::from_secs(5);
    let collect = |h: JoinHandle<String>| async move {
        match tokio::time::timeout(grace, h).await {
            Ok(Ok(s)) => s,
            _ => "(output unavailable)".into(),
        }
    };
    Output {
        what,
        status,
        stdout: collect(stdout).await,
        stderr: collect(stderr).await,
    }
}

// ---- installs ----

/// A fresh staging directory next to `dir`, private to this process.
fn staging(dir: &Path) -> PathBuf {
    let name = dir.file_name().expect("name").to_string_lossy();
    let stage = dir.with_file_name(format!("{name}.stage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage).unwrap_or_else(|e| panic!("create {}: {e}", stage.display()));
    stage
}

/// Moves a finished install into place, replacing a stale one. If another
/// run got there first, its install is kept.
fn publish(stage: &Path, dir: &Path) {
    // Tests run in parallel processes: another one may have published the
    // same packages while this one installed. Keep theirs (removing a
    // directory another test is reading breaks that test) and drop ours.
    if std::fs::rename(stage, dir).is_err() {
        let _ = std::fs::remove_dir_all(stage);
    }
}

/// Removes a directory of packages found not ready (stale or broken), so
/// the fresh install can take its place.
fn discard_unready(dir: &Path) {
    if dir.exists() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// After a failed install: prints why the test skips when the registry
/// cannot be reached, else fails the test with the install's output.
fn skip_or_fail(install: &Output, registry: &str, probe: Output) {
    if probe.ok() {
        panic!(
            "install failed although {registry} is reachable:\n{}",
            install.describe()
        );
    }
    println!(
        "skipping: {registry} cannot be reached ({}); the install failed with: {}",
        probe.reason(),
        install.reason()
    );
}

/// Asks pip's configured index (not local wheel directories) for grpcio.
async fn probe_pypi() -> Output {
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "pip", "index", "versions", "grpcio"])
        .args(["--retries", "0", "--timeout", "15", "--disable-pip-version-check"])
        .env("PIP_FIND_LINKS", "");
    run(cmd, PROBE_TIMEOUT).await
}

/// `npm ping` against npm's configured registry.
async fn probe_npm() -> Output {
    let mut cmd = Command::new("npm");
    cmd.args(["ping", "--fetch-retries=0", "--fetch-timeout=15000"]);
    run(cmd, PROBE_TIMEOUT).await
}

async fn python_ready(dir: &Path, requirements: &str) -> bool {
    if std::fs::read_to_string(dir.join(STAMP)).ok().as_deref() != Some(requirements) {
        return false;
    }
    let mut cmd = Command::new("python3");
    cmd.args(["-c", "import grpc, grpc_tools.protoc"])
        .env("PYTHONPATH", dir);
    run(cmd, PROBE_TIMEOUT).await.ok()
}

/// The directory of the Python example's packages, installed with pip when
/// missing or made from other requirements; None when PyPI cannot be
/// reached.
pub(crate) async fn python_deps() -> Option<PathBuf> {
    let req_file = repo().join("examples/python/requirements.txt");
    let requirements = std::fs::read_to_string(&req_file).expect("read examples/python/requirements.txt");
    let dir = deps_root().join("python");
    if python_ready(&dir, &requirements).await {
        return Some(dir);
    }
    discard_unready(&dir);
    let stage = staging(&dir);
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-input",
        "--disable-pip-version-check",
    ])
    .args(["--retries", "2", "--timeout", "30", "--target"])
    .arg(&stage)
    .arg("-r")
    .arg(&req_file);
    let install = run(cmd, INSTALL_TIMEOUT).await;
    if !install.ok() {
        let _ = std::fs::remove_dir_all(&stage);
        skip_or_fail(&install, "PyPI", probe_pypi().await);
        return None;
    }
    std::fs::write(stage.join(STAMP), &requirements).expect("write stamp");
    publish(&stage, &dir);
    assert!(
        python_ready(&dir, &requirements).await,
        "grpc and grpc_tools do not import from {} after pip install:\n{}",
        dir.display(),
        install.describe()
    );
    Some(dir)
}

async fn node_ready(app: &Path) -> bool {
    let mut cmd = Command::new("node");
    cmd.args(["-e", "require('@grpc/grpc-js'); require('@grpc/proto-loader')"])
        .current_dir(app);
    run(cmd, PROBE_TIMEOUT).await.ok()
}

/// examples/node/node_modules, installed with `npm ci` when missing; false
/// when the npm registry cannot be reached.
pub(crate) async fn node_modules() -> bool {
    let app = repo().join("examples/node");
    if node_ready(&app).await {
        return true;
    }
    discard_unready(&app.join("node_modules"));
    let stage = staging(&deps_root().join("node"));
    let locked = app.join("package-lock.json").exists();
    for file in ["package.json", "package-lock.json"] {
        if app.join(file).exists() {
            std::fs::copy(app.join(file), stage.join(file)).unwrap_or_else(|e| panic!("copy {file}: {e}"));
        }
    }
    let mut cmd = Command::new("npm");
    cmd.arg(if locked { "ci" } else { "install" })
        .args([
            "--no-audit",
            "--no-fund",
            "--fetch-retries=2",
            "--fetch-retry-maxtimeout=10000",
        ])
        .current_dir(&stage);
    let install = run(cmd, INSTALL_TIMEOUT).await;
    if !install.ok() {
        let _ = std::fs::remove_dir_all(&stage);
        skip_or_fail(&install, "the npm registry", probe_npm().await);
        return false;
    }
    publish(&stage.join("node_modules"), &app.join("node_modules"));
    let _ = std::fs::remove_dir_all(&stage);
    assert!(
        node_ready(&app).await,
        "@grpc/grpc-js and @grpc/proto-loader do not load in examples/node after npm:\n{}",
        install.describe()
    );
    true
}

async fn buf_version(bin: &Path) -> Option<String> {
    if !bin.exists() {
        return None;
    }
    let mut cmd = Command::new(bin);
    cmd.arg("--version");
    let out = run(cmd, PROBE_TIMEOUT).await;
    out.ok()
        .then(|| format!("{}{}", out.stdout, out.stderr).trim().to_string())
}

/// The pinned buf, installed from npm under target/ when missing; None when
/// the npm registry cannot be reached.
async fn buf() -> Option<PathBuf> {
    let dir = deps_root().join("buf");
    let bin = dir.join("node_modules/.bin/buf");
    if buf_version(&bin).await.as_deref() == Some(BUF_VERSION) {
        return Some(bin);
    }
    discard_unready(&dir);
    let stage = staging(&dir);
    let mut cmd = Command::new("npm");
    cmd.args([
        "install",
        "--no-audit",
        "--no-fund",
        "--fetch-retries=2",
        "--fetch-retry-maxtimeout=10000",
        "--prefix",
    ])
    .arg(&stage)
    .arg(format!("@bufbuild/buf@{BUF_VERSION}"));
    let install = run(cmd, INSTALL_TIMEOUT).await;
    if !install.ok() {
        let _ = std::fs::remove_dir_all(&stage);
        skip_or_fail(&install, "the npm registry", probe_npm().await);
        return None;
    }
    publish(&stage, &dir);
    let version = buf_version(&bin).await;
    assert_eq!(
        version.as_deref(),
        Some(BUF_VERSION),
        "buf from npm does not run:\n{}",
        install.describe()
    );
    Some(bin)
}

// ---- JSON ----

/// What the clients print, one value a line.
type Json = serde_json::Value;

/// Path lookups that read as the clients' JSON does.
trait JsonPath {
    /// Parses one printed line.
    fn parse(s: &str) -> Result<Json, String>;
    /// The value at `path` (Null when absent).
    fn at(&self, path: &[&str]) -> &Json;
}

impl JsonPath for Json {
    fn parse(s: &str) -> Result<Json, String> {
        serde_json::from_str(s).map_err(|e| e.to_string())
    }

    fn at(&self, path: &[&str]) -> &Json {
        path.iter().fold(self, |j, k| &j[*k])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_sends_its_key() {
    let Some(deps) = python_deps().await else { return };
    credentials(&Client::Python(deps)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_client_sends_its_key() {
    if !node_modules().await {
        return;
    }
    credentials(&Client::Node).await;
}

/// Against a server with a key file: the client's `--key` (and
/// `OCCUPANCY_KEY`) is sent with every call; without it the call is
/// refused with UNAUTHENTICATED.
async fn credentials(client: &Client) {
    let keys = crate::auth::KeyFile::new(&crate::auth::key_file_text(""));
    let proc = Proc::spawn(&["--auth-keys", keys.path().to_str().expect("utf-8 path")]);
    let addr = proc.addr.to_string();
    let got = client
        .lines(&addr, &["--key", "dash:dash-secret", "get", "rooms:a"])
        .await;
    assert_eq!(got.len(), 1, "{} get printed {got:?}", client.name());
    assert_details(&got[0], "rooms:a", false, &[("connections", 0)]);
    let mut cmd = client.command(&addr, &["get", "rooms:a"]);
    cmd.env("OCCUPANCY_KEY", "dash:dash-secret");
    let out = run(cmd, CLIENT_TIMEOUT).await;
    assert!(
        out.ok(),
        "{} with OCCUPANCY_KEY failed:\n{}",
        client.name(),
        out.describe()
    );
    let mut cmd = client.command(&addr, &["get", "rooms:a"]);
    cmd.env_remove("OCCUPANCY_KEY").env_remove("OCCUPANCY_TOKEN");
    let out = run(cmd, CLIENT_TIMEOUT).await;
    assert!(!out.ok(), "{} without a key must fail", client.name());
    assert!(out.describe().contains("UNAUTHENTICATED"), "{}", out.describe());
}
