//! A private redis-server on a free loopback port in a temp dir, stopped on
//! drop. Never touches a Redis it did not start.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server process owned by the test.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// A redis-server on `port` (loopback only) keeping its files in `dir`,
/// persisting nothing, in the foreground, quiet: what every test server
/// starts from.
pub fn server_command(port: u16, dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(redis_binary());
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .args(["--loglevel", "warning"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

fn redis_binary() -> PathBuf {
    if let Ok(p) = std::env::var("REDIS_SERVER_BIN") {
        return p.into();
    }
    for p in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("redis-server not found: run the README's test command, which installs it");
}

impl RedisServer {
    /// Starts a fresh server and waits until it answers PING.
    pub fn start() -> Self {
        for _ in 0..5 {
            let mut s = RedisServer {
                child: None,
                port: free_port(),
                dir: tempfile::tempdir().expect("temp dir"),
            };
            if s.spawn() {
                return s;
            }
        }
        panic!("could not start redis-server after 5 attempts");
    }

    fn spawn(&mut self) -> bool {
        let child = server_command(self.port, self.dir.path())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            if self.ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
            return false;
        };
        redis::cmd("PING").query::<String>(&mut c).is_ok()
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A blocking connection for inspecting state.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("client")
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to test redis")
    }

    /// A blocking connection as an ACL user (a password with no characters
    /// that need escaping in a URL).
    pub fn connection_as(&self, user: &str, password: &str) -> redis::Connection {
        redis::Client::open(format!("redis://{user}:{password}@127.0.0.1:{}/", self.port))
            .expect("client")
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to test redis as a user")
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the server, to stall it
    /// without losing anything.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server running").id();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Kills the server (SIGKILL): its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a killed server again on the same port, empty.
    pub fn start_again(&mut self) {
        assert!(self.spawn(), "redis-server did not come back on port {}", self.port);
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.spawn(), "redis-server did not come back on port {}", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
