//! The example clients' packages and buf, installed when missing.
//!
//! The packages of examples/python/requirements.txt go under
//! `target/example-deps/python`, examples/node/node_modules comes from
//! `npm ci`, and buf from npm under `target/example-deps/buf`. Installs
//! are built in a private staging directory and renamed into place, so
//! concurrent runs never see half an install. A test skips, printing
//! `skipping: <reason>`, only when its install failed and the package
//! registry cannot be reached; every other failure fails it. Every child
//! process is time-bound.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use crate::support::command::{run, Output};
use crate::support::process::binary;

/// The pinned buf release (npm `@bufbuild/buf`).
const BUF_VERSION: &str = "1.75.0";

/// Bound of one install (pip, npm).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Bound of a registry probe and of an "is it installed" check.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// What records which requirements an install was made from.
const STAMP: &str = ".requirements.txt";

pub fn repo() -> PathBuf {
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
    cmd.args(["-c", "import grpc, grpc_tools.protoc, standardwebhooks"])
        .env("PYTHONPATH", dir);
    run(cmd, PROBE_TIMEOUT).await.ok()
}

/// The directory of the Python example's packages, installed with pip when
/// missing or made from other requirements; None when PyPI cannot be
/// reached.
pub async fn python_deps() -> Option<PathBuf> {
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
pub async fn node_modules() -> bool {
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
pub async fn buf() -> Option<PathBuf> {
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
