//! What every request scenario shares: the load options, connections to
//! the service (with an optional credential), the closed-loop driver
//! ([`run_load`]) and the `RESULT` line it ends with.

use std::time::{Duration, Instant};

use anyhow::Context;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::procfs;

#[derive(clap::Args, Clone)]
pub(crate) struct Load {
    /// The service.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub(crate) url: String,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    pub(crate) in_flight: usize,
    /// How long to measure.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) duration: Duration,
    /// NAME=PID of a process whose CPU time per operation over the
    /// measured window the result line reports (`cpu_us_NAME=`), with the
    /// load generator's own (`cpu_us_gen=`); repeatable.
    #[arg(long = "cpu-of", value_parser = parse_cpu_of)]
    pub(crate) cpu_of: Vec<(String, u32)>,
    /// API key `KEY_ID:SECRET` sent with every call as `authorization:
    /// Bearer KEY_ID:SECRET`; the scenario's result is then named
    /// `NAME-auth`.
    #[arg(long, value_parser = parse_key)]
    pub(crate) key: Option<Credential>,
}

impl Load {
    /// The scenario's name in its `RESULT` line: `-auth` appended when the
    /// calls carry a credential, so both runs land in one table.
    pub(crate) fn name(&self, scenario: &str) -> String {
        match self.key {
            Some(_) => format!("{scenario}-auth"),
            None => scenario.to_string(),
        }
    }

    /// The credential of the calls (none without `--key`).
    pub(crate) fn credential(&self) -> Credential {
        self.key.clone().unwrap_or_default()
    }
}

fn parse_cpu_of(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or("expected NAME=PID")?;
    let pid = pid.parse().map_err(|e| format!("bad pid {pid}: {e}"))?;
    Ok((name.to_string(), pid))
}

fn parse_key(s: &str) -> Result<Credential, String> {
    if !s.contains(':') {
        return Err("expected KEY_ID:SECRET".into());
    }
    let value = format!("Bearer {}", s.trim())
        .parse()
        .map_err(|e| format!("not a metadata value: {e}"))?;
    Ok(Credential(Some(value)))
}

/// The `authorization` metadata added to every call, if any.
#[derive(Clone, Default)]
pub(crate) struct Credential(Option<MetadataValue<Ascii>>);

impl Credential {
    /// The `authorization` value, for an HTTP client (`Bearer …`).
    pub(crate) fn header(&self) -> Option<&str> {
        // parsed from a `str`, so it is visible ASCII
        self.0.as_ref().and_then(|v| v.to_str().ok())
    }
}

impl tonic::service::Interceptor for Credential {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A connection to the service that sends a [`Credential`]. Calls without
/// one go through the same interceptor, so runs with and without
/// credentials pay the same client-side cost.
pub(crate) type Conn = InterceptedService<Channel, Credential>;

/// One HTTP/2 connection to `url`.
pub(crate) async fn channel(url: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connect to {url}"))
}

/// One HTTP/2 connection to `url` whose calls carry `cred`.
pub(crate) async fn conn(url: &str, cred: &Credential) -> anyhow::Result<Conn> {
    Ok(InterceptedService::new(channel(url).await?, cred.clone()))
}

/// Connections to the service: one HTTP/2 connection per 16 requests in
/// flight.
pub(crate) async fn conns(url: &str, cred: &Credential, in_flight: usize) -> anyhow::Result<Vec<Conn>> {
    let mut out = Vec::new();
    for _ in 0..in_flight.div_ceil(16).max(1) {
        out.push(conn(url, cred).await?);
    }
    Ok(out)
}

/// A duration in milliseconds, as the result lines give them.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `p` quantile (0 to 1) of sorted samples; NaN when there are none.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// A cheap deterministic mix for picking names.
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut x = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_add(0x632B_E59B_D9B4_E019);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

/// What a closed-loop run measured.
pub(crate) struct Stats {
    pub(crate) ops: u64,
    pub(crate) elapsed: Duration,
    latencies_ms: Vec<f64>,
    /// CPU time of each watched process over the measured window.
    cpu: Vec<(String, Duration)>,
}

impl Stats {
    /// Operations per second.
    pub(crate) fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile of the call latencies, in ms.
    pub(crate) fn p(&mut self, q: f64) -> f64 {
        self.latencies_ms.sort_by(f64::total_cmp);
        percentile(&self.latencies_ms, q)
    }

    /// ` cpu_us_NAME_SUFFIX=X` for each watched process: its CPU time per
    /// operation, for a result line that holds several runs.
    pub(crate) fn cpu_fields(&self, suffix: &str) -> String {
        let named: Vec<(String, Duration)> = self.cpu.iter().map(|(n, t)| (format!("{n}_{suffix}"), *t)).collect();
        procfs::per_op(&named, self.ops)
    }

    /// Prints the scenario's `RESULT` line: rate, p50, p99, the number of
    /// operations, `extra` (as ` key=value` pairs) and the CPU per
    /// operation of each watched process.
    pub(crate) fn print(&mut self, scenario: &str, extra: &str) {
        let rate = self.rate();
        let (p50, p99) = (self.p(0.5), self.p(0.99));
        println!(
            "RESULT scenario={scenario} rate={rate:.0} p50_ms={p50:.3} p99_ms={p99:.3} ops={}{extra}{}",
            self.ops,
            procfs::per_op(&self.cpu, self.ops)
        );
    }
}

/// Runs `call` from `in_flight` workers for `duration`; each call returns
/// how many operations it did. Worker `w`'s `i`-th call gets `(conn, w, i)`.
pub(crate) async fn run_load<F, Fut>(load: &Load, call: F) -> anyhow::Result<Stats>
where
    F: Fn(Conn, usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send,
{
    let conns = conns(&load.url, &load.credential(), load.in_flight).await?;
    // CPU is read only when asked for: the result line then stays as short
    // as before for scenarios that watch nothing
    let cpu = (!load.cpu_of.is_empty())
        .then(|| procfs::Window::start(&load.cpu_of))
        .transpose()?;
    let start = Instant::now();
    let deadline = start + load.duration;
    let mut workers = Vec::new();
    for w in 0..load.in_flight {
        let ch = conns[w % conns.len()].clone();
        let call = call.clone();
        workers.push(tokio::spawn(async move {
            let mut ops = 0u64;
            let mut lat = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                ops += call(ch.clone(), w, i).await?;
                lat.push(ms(t.elapsed()));
                i += 1;
            }
            Ok::<_, anyhow::Error>((ops, lat))
        }));
    }
    let mut stats = Stats {
        ops: 0,
        elapsed: Duration::ZERO,
        latencies_ms: Vec::new(),
        cpu: Vec::new(),
    };
    for w in workers {
        let (ops, lat) = w.await??;
        stats.ops += ops;
        stats.latencies_ms.extend(lat);
    }
    stats.elapsed = start.elapsed();
    stats.cpu = cpu.map(procfs::Window::end).transpose()?.unwrap_or_default();
    Ok(stats)
}
