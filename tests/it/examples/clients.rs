//! The example clients as child processes: run to completion, or
//! streaming with their lines read as they come.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;

use super::{Json, JsonPath, CLIENT_TIMEOUT};
use crate::support::command::{read_all, run};
use crate::support::deps::repo;

/// One of the example clients.
pub enum Client {
    /// examples/python, with its packages in this directory.
    Python(PathBuf),
    /// examples/node.
    Node,
}

impl Client {
    pub fn name(&self) -> &'static str {
        match self {
            Client::Python(_) => "python client",
            Client::Node => "node client",
        }
    }

    pub fn command(&self, addr: &str, args: &[&str]) -> Command {
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
    pub async fn lines(&self, addr: &str, args: &[&str]) -> Vec<Json> {
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
pub struct Stream {
    what: String,
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    stderr: JoinHandle<String>,
}

impl Stream {
    pub fn start(client: &Client, addr: &str, args: &[&str]) -> Self {
        Self::spawn(client, addr, args, Stdio::null())
    }

    /// A client reading what the test writes to the returned input.
    pub fn start_with_input(client: &Client, addr: &str, args: &[&str]) -> (Self, tokio::process::ChildStdin) {
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
    pub async fn next(&mut self) -> Json {
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
    pub async fn stop(&mut self) -> String {
        let _ = self.child.kill().await;
        match tokio::time::timeout(Duration::from_secs(5), &mut self.stderr).await {
            Ok(Ok(s)) => s,
            _ => "(unavailable)".into(),
        }
    }

    /// Waits for the client to exit on its own (it was given --count, or
    /// its input ended), and checks it succeeded without printing anything
    /// more.
    pub async fn finish(mut self) {
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
