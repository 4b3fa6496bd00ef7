//! A private nginx, configured from the shipped `deploy/nginx.conf` with
//! its upstreams and listen address replaced, on a free loopback port.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An nginx process owned by the test.
pub struct Nginx {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its HTTP server (for the replicas' HTTP side) listens.
    pub http_addr: SocketAddr,
    _dir: tempfile::TempDir,
}

fn binary() -> &'static str {
    for p in [
        "/usr/sbin/nginx",
        "/usr/local/sbin/nginx",
        "/usr/local/nginx/sbin/nginx",
    ] {
        if std::path::Path::new(p).exists() {
            return p;
        }
    }
    panic!("nginx not found: run the README's test command, which installs it");
}

/// The shipped configuration, pointed at `upstreams` and listening on
/// `listen` (the HTTP side at `http_upstreams` and `http_listen`), with
/// logs and temp files in `dir`.
pub fn config_with_http(
    upstreams: &[SocketAddr],
    listen: SocketAddr,
    http_upstreams: &[SocketAddr],
    http_listen: SocketAddr,
    dir: &std::path::Path,
) -> String {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx.conf")).expect("deploy/nginx.conf");
    let mut out = String::new();
    let mut servers_written = false;
    let mut in_http_upstream = false;
    for line in shipped.lines() {
        let t = line.trim_start();
        if t.starts_with("upstream occupancy_http ") {
            in_http_upstream = true;
            out.push_str(line);
            out.push('\n');
            for u in http_upstreams {
                out.push_str(&format!("        server {u};\n"));
            }
            continue;
        }
        if in_http_upstream {
            if t.starts_with('}') {
                in_http_upstream = false;
            } else if t.starts_with("server ") {
                continue;
            }
        }
        if t.starts_with("listen ") && !t.contains("http2") {
            out.push_str(&format!("        listen {http_listen};\n"));
            continue;
        }
        if t.starts_with("server 127.0.0.1:") {
            if !servers_written {
                for u in upstreams {
                    out.push_str(&format!("        server {u};\n"));
                }
                servers_written = true;
            }
            continue;
        }
        if t.starts_with("listen ") {
            out.push_str(&format!("        listen {listen} http2;\n"));
            continue;
        }
        if t.starts_with("worker_processes") {
            out.push_str("worker_processes 1;\n");
            continue;
        }
        if t.starts_with("http {") {
            let d = dir.display();
            out.push_str(&format!(
                "http {{\n    access_log off;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n"
            ));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert!(servers_written, "deploy/nginx.conf has no upstream servers");
    out
}

impl Nginx {
    /// Starts nginx in front of `upstreams` and waits until it accepts.
    pub fn start(upstreams: &[SocketAddr]) -> Self {
        Self::start_with(upstreams, |c| c)
    }

    /// [`Nginx::start`] with the configuration passed through `edit` (to
    /// lower a timeout, say).
    pub fn start_with(upstreams: &[SocketAddr], edit: impl FnOnce(String) -> String) -> Self {
        Self::start_full(upstreams, upstreams, edit)
    }

    /// [`Nginx::start`] with the replicas' HTTP sides at `http_upstreams`.
    pub fn start_with_http(upstreams: &[SocketAddr], http_upstreams: &[SocketAddr]) -> Self {
        Self::start_full(upstreams, http_upstreams, |c| c)
    }

    /// Starts nginx in front of the replicas' gRPC (`upstreams`) and HTTP
    /// sides (`http_upstreams`), the configuration passed through `edit`.
    pub fn start_full(
        upstreams: &[SocketAddr],
        http_upstreams: &[SocketAddr],
        edit: impl FnOnce(String) -> String,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let listen = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let http_listen = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(
            &conf,
            edit(config_with_http(
                upstreams,
                listen,
                http_upstreams,
                http_listen,
                dir.path(),
            )),
        )
        .unwrap();
        let global = format!(
            "daemon off; pid {}/nginx.pid; error_log {}/error.log warn;",
            dir.path().display(),
            dir.path().display()
        );
        let mut child = Command::new(binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .args(["-g", &global])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn nginx");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(listen).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
                panic!("nginx exited with {status}: {log}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("nginx did not listen within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            addr: listen,
            http_addr: http_listen,
            _dir: dir,
        }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
