//! Time-bound child commands (example clients, installers, the README's
//! commands) and what they printed.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::task::JoinHandle;

/// What a finished (or timed out) child printed.
pub struct Output {
    what: String,
    /// None when it was killed for running too long.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn describe(&self) -> String {
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
    pub fn reason(&self) -> String {
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

pub async fn read_all(mut r: impl AsyncRead + Unpin) -> String {
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// Runs `cmd` to completion, killing it after `limit`. Fails the test only
/// when it cannot be started at all.
pub async fn run(mut cmd: Command, limit: Duration) -> Output {
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
