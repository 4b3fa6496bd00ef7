//! The real `occupancy` binary as a child process, killed on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `occupancy serve` process.
pub struct Proc {
    child: Child,
    /// The address it serves on.
    pub addr: SocketAddr,
    /// Every line it printed.
    pub log: Arc<Mutex<Vec<String>>>,
}

/// Runs `cmd` to completion and returns its stdout; fails the test, with
/// its stderr, when it cannot start or does not succeed.
pub fn stdout_of(cmd: &mut Command, what: &str) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// The binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_occupancy")
}

impl Proc {
    /// Starts the binary with `args` (plus `--listen 127.0.0.1:0`) and
    /// waits for the log line that names its address. Its output is
    /// drained in the background so it never blocks on a full pipe.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_on("127.0.0.1:0", args)
    }

    /// `n` replicas sharing the Redis at `redis_url`, each started with
    /// `args` too.
    pub fn replicas(n: usize, redis_url: &str, args: &[&str]) -> Vec<Self> {
        let args: Vec<&str> = ["--redis-url", redis_url].iter().chain(args).copied().collect();
        (0..n).map(|_| Self::spawn(&args)).collect()
    }

    /// [`Proc::spawn`] listening on `listen`.
    pub fn spawn_on(listen: &str, args: &[&str]) -> Self {
        let mut child = Command::new(binary())
            .args(["serve", "--listen", listen])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn occupancy");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut l) = sink.lock() {
                    l.push(line.clone());
                }
                if line.contains("serving") {
                    if let Some(addr) = line.split("addr=").nth(1) {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(addr.split_whitespace().next().unwrap_or("").to_string());
                        }
                    }
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(20));
        let mut proc = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        proc.addr = addr
            .expect("occupancy printed no 'serving' line within 20 s")
            .parse()
            .expect("addr");
        proc
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The HTTP side's address, from its log line (started with
    /// `--http-listen`); waits up to 20 s for it.
    pub fn http_addr(&self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self.log.lock().ok().and_then(|l| {
                l.iter()
                    .filter(|x| x.contains("HTTP side listening"))
                    .find_map(|x| x.split("http=").nth(1)?.split_whitespace().next()?.parse().ok())
            });
            if let Some(a) = found {
                return a;
            }
            assert!(Instant::now() < deadline, "no 'HTTP side listening' line within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it printed a line containing `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.log
            .lock()
            .map(|l| l.iter().any(|x| x.contains(needle)))
            .unwrap_or(false)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `KILL`, ...).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit, at most `within`.
    pub fn wait(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
