//! The dashboard page in a real browser: headless Chromium driven over
//! WebDriver (chromedriver and the `fantoccini` client) loads `/` from a
//! running replica, shows the channels the test created with the right
//! counts, and follows changes over server-sent events without a reload.
//! A screenshot is saved as `target/dashboard.png`.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use occupancy::proto::v1::Mode;
use serde_json::{json, Value};

use crate::fixture::Fx;
use crate::support::process::Proc;

/// chromedriver, killed on drop.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.exists()).or_else(|| {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .flat_map(|d| candidates.iter().map(move |c| d.join(c)))
            .find(|p| p.is_file())
    })
}

/// The browser and its driver, or why they are not there.
fn browser() -> Result<(PathBuf, PathBuf), String> {
    let driver = find(&["/usr/bin/chromedriver", "chromedriver"])
        .ok_or("chromedriver not found (Debian's chromium-driver; scripts/test installs it)")?;
    let chromium = find(&["/usr/bin/chromium", "chromium", "chromium-browser"])
        .ok_or("chromium not found (Debian's chromium; scripts/test installs it)")?;
    Ok((driver, chromium))
}

fn start_driver(driver: &PathBuf) -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(driver)
        .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let d = Driver {
        child,
        port,
        _profile: tempfile::tempdir().unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    d
}

async fn open_browser(d: &Driver, chromium: &std::path::Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000",
                format!("--user-data-dir={}", d._profile.path().display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", d.port))
        .await
        .expect("a WebDriver session in headless Chromium")
}

/// The text of the first element matching `selector`, or "" when none.
async fn text(c: &Client, selector: &str) -> String {
    let v = c
        .execute(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
            vec![Value::from(selector)],
        )
        .await
        .expect("execute");
    v.as_str().unwrap_or("").to_string()
}

/// Waits (bounded) until `selector`'s text is `want`; returns how long it took.
async fn wait_text(c: &Client, selector: &str, want: &str) -> Duration {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(15);
    loop {
        let got = text(c, selector).await;
        if got == want {
            return start.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{selector} shows {got:?}, not {want:?}, after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The channel of the table's first row.
async fn top_row(c: &Client) -> serde_json::Value {
    c.execute("return document.querySelector('#rows tr').dataset.channel;", vec![])
        .await
        .unwrap()
}

fn cell(channel: &str, metric: &str) -> String {
    format!("tr[data-channel=\"{channel}\"] td[data-metric=\"{metric}\"]")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_channels_and_follows_changes_in_a_real_browser() {
    let (driver, chromium) = match browser() {
        Ok(b) => b,
        Err(why) => {
            println!("SKIPPED: {why}");
            return;
        }
    };
    let p = Proc::spawn(&["--http-listen", "127.0.0.1:0"]);
    let http = p.http_addr();
    let fx = Fx::connect(&p.url()).await;
    fx.keep_alive("fe", 60_000).await;
    for i in 0..3 {
        fx.attach("fe", &format!("a{i}"), "dash:lobby", &[Mode::Subscribe, Mode::Presence])
            .await;
    }
    fx.enter("fe", "a0", "dash:lobby", "alice").await;
    fx.attach("fe", "b0", "dash:kitchen", &[Mode::Publish]).await;

    let d = start_driver(&driver);
    let c = open_browser(&d, &chromium).await;
    c.goto(&format!("http://{http}/")).await.expect("load the dashboard");
    assert_eq!(c.title().await.unwrap(), "Occupancy");
    wait_text(&c, &cell("dash:lobby", "connections"), "3").await;
    wait_text(&c, &cell("dash:lobby", "presenceMembers"), "1").await;
    wait_text(&c, &cell("dash:kitchen", "publishers"), "1").await;
    // busiest first
    let first = top_row(&c).await;
    assert_eq!(first, "dash:lobby");
    wait_text(&c, "#t-activeChannels", "2").await;
    wait_text(&c, "#t-connections", "4").await;
    wait_text(&c, "#health", "SERVING").await;
    wait_text(&c, "#feed", "live").await;

    // more connections: the page follows over SSE (it fetches no list
    // after loading), and a new channel shows up at the top
    for i in 3..6 {
        fx.attach("fe", &format!("a{i}"), "dash:lobby", &[Mode::Subscribe])
            .await;
    }
    let took = wait_text(&c, &cell("dash:lobby", "connections"), "6").await;
    println!("the page showed 3 more connections {took:?} after the last attach returned");
    for i in 0..8 {
        fx.attach("fe", &format!("n{i}"), "dash:new", &[Mode::Subscribe]).await;
    }
    wait_text(&c, &cell("dash:new", "connections"), "8").await;
    let first = top_row(&c).await;
    assert_eq!(first, "dash:new");

    // a channel's chart
    c.execute(
        "document.querySelector('tr[data-channel=\"dash:lobby\"] button').click();",
        vec![],
    )
    .await
    .unwrap();
    wait_text(&c, "#chart-name", "dash:lobby").await;
    let paths = c
        .execute("return document.querySelectorAll('#chart path').length;", vec![])
        .await
        .unwrap();
    assert_eq!(paths, 9, "one line per metric");
    wait_text(&c, "#t-connections", "15").await;
    let png = c.screenshot().await.expect("screenshot");
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("dashboard.png");
    std::fs::write(&out, png).expect("save the screenshot");
    println!("screenshot: {}", out.display());

    // the prefix filter
    c.execute(
        "document.getElementById('prefix').value = 'dash:k'; document.querySelector('#filter button').click();",
        vec![],
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let rows = c
            .execute(
                "return [...document.querySelectorAll('#rows tr')].map(r => r.dataset.channel);",
                vec![],
            )
            .await
            .unwrap();
        if rows == json!(["dash:kitchen"]) {
            break;
        }
        assert!(Instant::now() < deadline, "prefix filter shows {rows}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    c.close().await.expect("close the browser");
}
