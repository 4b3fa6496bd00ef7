//! The REST read scenario, driven by an HTTP load tool (h2load), whose
//! summary is parsed here.

use std::io::Write as _;
use std::process::Command;

use anyhow::{bail, Context};

use crate::load::{mix, Load};
use crate::procfs;

/// The REST read scenario: `GET /channels/{id}` of random channels among
/// the 10,000 the writes use, from h2load over HTTP/1.1 (one thread,
/// `in_flight` connections with one request each in flight, as the gRPC
/// `get` scenario's requests in flight) for `duration`.
pub(crate) async fn rest_get(load: Load) -> anyhow::Result<()> {
    let path = std::env::temp_dir().join(format!("occupancy-bench-uris-{}", std::process::id()));
    let mut uris = Vec::new();
    for i in 0..1000u64 {
        writeln!(uris, "{}/channels/bench:{}", load.url, mix(7, i) % 10_000)?;
    }
    std::fs::write(&path, uris).with_context(|| format!("writing {}", path.display()))?;
    let mut h2load = Command::new("h2load");
    h2load
        .args(["--h1", "-t", "1", "-m", "1"])
        .args(["-c", &load.in_flight.to_string()])
        // whole seconds: h2load reads a unit suffix `m` as minutes
        .args(["-D", &load.duration.as_secs().max(1).to_string()])
        .arg("-i")
        .arg(&path);
    if let Some(auth) = load.credential().header() {
        h2load.arg("-H").arg(format!("authorization: {auth}"));
    }
    let cpu = procfs::Window::start(&load.cpu_of)?;
    let out = h2load.output();
    let cpu = cpu.end()?;
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    let out = out.context("running h2load (Debian's nghttp2-client)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("h2load failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    }
    let report = H2loadReport::parse(&text)?;
    if report.failed > 0 || report.non_2xx > 0 {
        bail!(
            "h2load: {} failed, {} not 2xx requests\n{text}",
            report.failed,
            report.non_2xx
        );
    }
    // h2load is a child process: its CPU is not this process's, so only
    // the watched processes are reported
    let watched: Vec<_> = cpu.into_iter().filter(|(n, _)| n != "gen").collect();
    println!(
        "RESULT scenario={} rate={:.0} mean_ms={:.3} requests={} connections={}{}",
        load.name("rest-get"),
        report.rate,
        report.mean_ms,
        report.succeeded,
        load.in_flight,
        procfs::per_op(&watched, report.succeeded)
    );
    Ok(())
}

/// What h2load's summary says.
#[derive(Debug, PartialEq)]
struct H2loadReport {
    rate: f64,
    succeeded: u64,
    failed: u64,
    non_2xx: u64,
    mean_ms: f64,
}

impl H2loadReport {
    /// Parses the lines `finished in 1.00s, 45000.00 req/s, ...`,
    /// `requests: N total, N started, N done, N succeeded, N failed, ...`,
    /// `status codes: N 2xx, N 3xx, N 4xx, N 5xx` and
    /// `time for request: MIN MAX MEAN SD ...`.
    fn parse(text: &str) -> anyhow::Result<Self> {
        let line = |prefix: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(prefix))
                .with_context(|| format!("no `{prefix}` line in h2load's output:\n{text}"))
        };
        // "N word" pairs separated by commas
        let count = |fields: &str, word: &str| -> anyhow::Result<u64> {
            fields
                .split(',')
                .find_map(|f| f.trim().strip_suffix(word).map(str::trim))
                .with_context(|| format!("no `{word}` count in {fields:?}"))?
                .parse()
                .with_context(|| format!("bad `{word}` count in {fields:?}"))
        };
        let finished = line("finished in")?;
        let rate = finished
            .split(',')
            .find_map(|f| f.trim().strip_suffix(" req/s"))
            .with_context(|| format!("no req/s in {finished:?}"))?
            .parse()?;
        let requests = line("requests:")?;
        let codes = line("status codes:")?;
        let non_2xx = count(codes, "3xx")? + count(codes, "4xx")? + count(codes, "5xx")?;
        let times = line("time for request:")?;
        let mean = times
            .split_whitespace()
            .nth(2)
            .context("no mean in `time for request`")?;
        Ok(Self {
            rate,
            succeeded: count(requests, "succeeded")?,
            failed: count(requests, "failed")?,
            non_2xx,
            mean_ms: duration_ms(mean)?,
        })
    }
}

/// h2load's durations: `850us`, `1.23ms`, `2.5s`.
fn duration_ms(s: &str) -> anyhow::Result<f64> {
    let (n, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e3)
    } else {
        bail!("not a duration: {s}")
    };
    Ok(n.parse::<f64>().with_context(|| format!("not a duration: {s}"))? * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// h2load 1.52's summary of an HTTP/1.1 run.
    const OUTPUT: &str = "\
starting benchmark...
spawning thread #0: 64 total client(s). Timing-based test with 0s warm-up time and 1s main duration for main phase.
Warm-up phase is over for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 1.00s, 20500.00 req/s, 6.95MB/s
requests: 20500 total, 20564 started, 20500 done, 20499 succeeded, 1 failed, 0 errored, 0 timeout
status codes: 20499 2xx, 0 3xx, 2 4xx, 0 5xx
traffic: 6.95MB (7288294) total, 1.43MB (1496500) headers (space savings 0.00%), 5.31MB (5565750) data
                     min         max         mean         sd        +/- sd
time for request:      367us     12.04ms      3.07ms       950us    73.81%
time for connect:      141us      3.72ms      1.81ms      1.02ms    59.38%
time to 1st byte:     4.48ms      6.61ms      5.61ms       649us    57.81%
req/s           :     311.80      333.61      320.26        6.51    62.50%
";

    #[test]
    fn h2load_summary_parses() {
        let r = H2loadReport::parse(OUTPUT).unwrap();
        assert_eq!(
            r,
            H2loadReport {
                rate: 20500.0,
                succeeded: 20499,
                failed: 1,
                non_2xx: 2,
                mean_ms: 3.07,
            }
        );
        assert_eq!(duration_ms("850us").unwrap(), 0.85);
        assert_eq!(duration_ms("2.5s").unwrap(), 2500.0);
        assert!(H2loadReport::parse("finished in 1.00s\n").is_err());
    }
}
