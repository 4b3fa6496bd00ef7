//! Load generator for the occupancy service. Each scenario prints one
//! `RESULT scenario=NAME key=value ...` line that `scripts/bench` collects
//! into its table.
//!
//! - `apply`: Apply batches of 100 operations over 10,000 channels.
//! - `unary`: Attach/Detach calls.
//! - `get`, `batch-get`: reads.
//! - `size-get`, `size-list`: read cost on a huge channel, and a list page
//!   with many channels, against small ones.
//! - `fanout`: events delivered per second across many streams.
//! - `latency`: Attach returns on replica A → event at each subscriber on B.
//! - `footprint`: Redis memory per attachment and per presence member.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use occupancy::proto::v1 as pb;
use pb::connection_service_client::ConnectionServiceClient;
use pb::occupancy_service_client::OccupancyServiceClient;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser)]
#[command(name = "occupancy-bench", about = "load generator for the occupancy service")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(clap::Args, Clone)]
struct Load {
    /// The service.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    url: String,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// How long to measure.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
}

#[derive(Subcommand)]
enum Scenario {
    /// Apply batches (attach/detach/enter/leave) over many channels.
    Apply {
        #[command(flatten)]
        load: Load,
        /// Operations per batch.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Channels written.
        #[arg(long, default_value_t = 10_000)]
        channels: usize,
    },
    /// Unary Attach and Detach.
    Unary {
        #[command(flatten)]
        load: Load,
    },
    /// GetOccupancy of random channels.
    Get {
        #[command(flatten)]
        load: Load,
    },
    /// BatchGetOccupancy of N channels (reported per channel).
    BatchGet {
        #[command(flatten)]
        load: Load,
        /// Channels per call.
        #[arg(long, default_value_t = 100)]
        size: usize,
    },
    /// GetOccupancy p50 on a channel with N connections against one with 1.
    SizeGet {
        #[command(flatten)]
        load: Load,
        /// Connections on the big channel.
        #[arg(long, default_value_t = 100_000)]
        connections: usize,
    },
    /// A ListChannels page (limit 100) with N active channels against N/100.
    SizeList {
        #[command(flatten)]
        load: Load,
        /// Channels in the big setup.
        #[arg(long, default_value_t = 1_000_000)]
        channels: usize,
    },
    /// Events delivered per second across many streams on one replica.
    Fanout {
        #[command(flatten)]
        load: Load,
        /// Streams.
        #[arg(long, default_value_t = 10_000)]
        streams: usize,
        /// Channels the streams are spread over.
        #[arg(long, default_value_t = 100)]
        channels: usize,
    },
    /// Redis memory per attachment and per presence member.
    Footprint {
        #[command(flatten)]
        load: Load,
        /// The Redis behind the service, for INFO memory.
        #[arg(long)]
        redis_url: String,
        /// Attachments (and presence members) to add.
        #[arg(long, default_value_t = 1_000_000)]
        count: usize,
    },
    /// Attach on replica A → event on every subscriber on replica B.
    Latency {
        /// Replica A (writes).
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        a: String,
        /// Replica B (subscribers).
        #[arg(long, default_value = "http://127.0.0.1:50052")]
        b: String,
        /// Subscribers on B, all following the measured channel.
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Changes to measure.
        #[arg(long, default_value_t = 500)]
        changes: usize,
        /// Changes per second.
        #[arg(long, default_value_t = 100)]
        rate: u32,
    },
}

async fn channel(url: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connect to {url}"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn latency(a: String, b: String, subscribers: usize, changes: usize, rate: u32) -> anyhow::Result<()> {
    let run = format!("lat-{}", std::process::id());
    let channel_name = format!("{run}:room");
    let start = Instant::now();
    // spread subscribers over connections (HTTP/2 stream limits)
    let per_conn = 100;
    let mut conns = Vec::new();
    for _ in 0..subscribers.div_ceil(per_conn) {
        conns.push(channel(&b).await?);
    }
    let mut streams = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        let mut client = OccupancyServiceClient::new(conns[i / per_conn].clone());
        let mut s = client
            .subscribe_occupancy(pb::SubscribeOccupancyRequest {
                channels: vec![channel_name.clone()],
                ..Default::default()
            })
            .await?
            .into_inner();
        // the snapshot event
        s.message().await?.context("stream ended before its snapshot")?;
        streams.push(s);
    }
    let mut readers = Vec::with_capacity(subscribers);
    for mut s in streams {
        readers.push(tokio::spawn(async move {
            let mut got: Vec<(u32, Duration)> = Vec::with_capacity(changes);
            while got.len() < changes {
                match tokio::time::timeout(Duration::from_secs(10), s.message()).await {
                    Ok(Ok(Some(r))) => {
                        let at = start.elapsed();
                        if let Ok(Some(e)) = r.into_event() {
                            if let Some(m) = e.metrics {
                                got.push((m.connections, at));
                            }
                        }
                    }
                    _ => break,
                }
            }
            got
        }));
    }
    let mut writer = ConnectionServiceClient::new(channel(&a).await?);
    let mut returned = vec![Duration::ZERO; changes + 1];
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    for (i, slot) in returned.iter_mut().enumerate().skip(1) {
        tick.tick().await;
        writer
            .attach(pb::AttachRequest {
                session_id: run.clone(),
                connection_id: format!("c{i}"),
                channel: channel_name.clone(),
                modes: vec![pb::Mode::Subscribe as i32],
            })
            .await?;
        *slot = start.elapsed();
    }
    let mut samples = Vec::with_capacity(subscribers * changes);
    let mut missing = 0usize;
    for r in readers {
        let got = r.await?;
        missing += changes.saturating_sub(got.len());
        for (n, at) in got {
            if let Some(t) = returned.get(n as usize) {
                samples.push(at.saturating_sub(*t).as_secs_f64() * 1000.0);
            }
        }
    }
    writer
        .close_session(pb::CloseSessionRequest { session_id: run })
        .await?;
    if samples.is_empty() {
        bail!("no events received");
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "RESULT scenario=latency subscribers={subscribers} changes={changes} change_rate={rate} samples={} missing={missing} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        samples[samples.len() - 1]
    );
    Ok(())
}

struct Stats {
    ops: u64,
    elapsed: Duration,
    latencies_ms: Vec<f64>,
}

impl Stats {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn p(&mut self, q: f64) -> f64 {
        self.latencies_ms.sort_by(f64::total_cmp);
        percentile(&self.latencies_ms, q)
    }
}

/// Channels to the service: one HTTP/2 connection per 16 requests in flight.
async fn channels(url: &str, in_flight: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::new();
    for _ in 0..in_flight.div_ceil(16).max(1) {
        out.push(channel(url).await?);
    }
    Ok(out)
}

/// Runs `call` from `in_flight` workers for `duration`; each call returns
/// how many operations it did.
async fn run_load<F, Fut>(load: &Load, call: F) -> anyhow::Result<Stats>
where
    F: Fn(Channel, usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send,
{
    let conns = channels(&load.url, load.in_flight).await?;
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
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                i += 1;
            }
            Ok::<_, anyhow::Error>((ops, lat))
        }));
    }
    let mut stats = Stats {
        ops: 0,
        elapsed: Duration::ZERO,
        latencies_ms: Vec::new(),
    };
    for w in workers {
        let (ops, lat) = w.await??;
        stats.ops += ops;
        stats.latencies_ms.extend(lat);
    }
    stats.elapsed = start.elapsed();
    Ok(stats)
}

fn result(scenario: &str, stats: &mut Stats, extra: &str) {
    let rate = stats.rate();
    let (p50, p99) = (stats.p(0.5), stats.p(0.99));
    println!("RESULT scenario={scenario} rate={rate:.0} p50_ms={p50:.3} p99_ms={p99:.3}{extra}");
}

/// A cheap deterministic mix for picking names.
fn mix(a: u64, b: u64) -> u64 {
    let mut x = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_add(0x632B_E59B_D9B4_E019);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

fn op(kind: u64, conn: String, channel: String) -> pb::Operation {
    use pb::operation::Op;
    let op = match kind % 4 {
        0 => Op::Attach(pb::AttachOperation {
            connection_id: conn,
            channel,
            modes: vec![pb::Mode::Subscribe as i32, pb::Mode::Presence as i32],
        }),
        1 => Op::Enter(pb::PresenceOperation {
            connection_id: conn,
            channel,
            client_id: "user".into(),
        }),
        2 => Op::Leave(pb::PresenceOperation {
            connection_id: conn,
            channel,
            client_id: "user".into(),
        }),
        _ => Op::Detach(pb::DetachOperation {
            connection_id: conn,
            channel,
        }),
    };
    pb::Operation { op: Some(op) }
}

async fn apply(load: Load, batch: usize, channels: usize) -> anyhow::Result<()> {
    let run = std::process::id();
    let mut stats = run_load(&load, move |ch, w, i| async move {
        let ops: Vec<pb::Operation> = (0..batch as u64)
            .map(|k| {
                let r = mix(i, k + ((w as u64) << 32));
                let conn = format!("b{run}-w{w}-c{}", r % 500);
                let channel = format!("bench:{}", r % channels as u64);
                op(r >> 40, conn, channel)
            })
            .collect();
        ConnectionServiceClient::new(ch)
            .apply(pb::ApplyRequest {
                session_id: format!("bench-{run}-w{w}"),
                operations: ops,
                include_metrics: false,
                sequence: 0,
            })
            .await?;
        Ok(batch as u64)
    })
    .await?;
    result("apply", &mut stats, &format!(" batch={batch} channels={channels}"));
    Ok(())
}

async fn unary(load: Load) -> anyhow::Result<()> {
    let run = std::process::id();
    let mut stats = run_load(&load, move |ch, w, i| async move {
        let mut c = ConnectionServiceClient::new(ch);
        let conn = format!("u{run}-w{w}");
        let channel = format!("bench:{}", mix(w as u64, i / 2) % 10_000);
        if i % 2 == 0 {
            c.attach(pb::AttachRequest {
                session_id: format!("bench-{run}-w{w}"),
                connection_id: conn,
                channel,
                modes: vec![pb::Mode::Subscribe as i32],
            })
            .await?;
        } else {
            c.detach(pb::DetachRequest {
                session_id: format!("bench-{run}-w{w}"),
                connection_id: conn,
                channel,
            })
            .await?;
        }
        Ok(1)
    })
    .await?;
    result("unary", &mut stats, "");
    Ok(())
}

async fn get(load: Load) -> anyhow::Result<()> {
    let mut stats = run_load(&load, move |ch, w, i| async move {
        OccupancyServiceClient::new(ch)
            .get_occupancy(pb::GetOccupancyRequest {
                channel: format!("bench:{}", mix(w as u64, i) % 10_000),
            })
            .await?;
        Ok(1)
    })
    .await?;
    result("get", &mut stats, "");
    Ok(())
}

async fn batch_get(load: Load, size: usize) -> anyhow::Result<()> {
    let mut stats = run_load(&load, move |ch, w, i| async move {
        let channels = (0..size as u64)
            .map(|k| format!("bench:{}", mix(w as u64 ^ k, i) % 10_000))
            .collect();
        OccupancyServiceClient::new(ch)
            .batch_get_occupancy(pb::BatchGetOccupancyRequest { channels })
            .await?;
        Ok(size as u64)
    })
    .await?;
    result("batch-get", &mut stats, &format!(" size={size} unit=channels"));
    Ok(())
}

/// Attaches `count` connections of `session` to channels named by `name`,
/// in batches of 10,000.
async fn fill(
    url: &str,
    session: &str,
    count: usize,
    modes: &[pb::Mode],
    name: impl Fn(usize) -> (String, String),
) -> anyhow::Result<()> {
    let mut c = ConnectionServiceClient::new(channel(url).await?);
    c.keep_alive(pb::KeepAliveRequest {
        session_id: session.to_string(),
        ttl_ms: 600_000,
    })
    .await?;
    let modes: Vec<i32> = modes.iter().map(|m| *m as i32).collect();
    for start in (0..count).step_by(10_000) {
        let ops = (start..(start + 10_000).min(count))
            .map(|i| {
                let (conn, channel) = name(i);
                pb::Operation {
                    op: Some(pb::operation::Op::Attach(pb::AttachOperation {
                        connection_id: conn,
                        channel,
                        modes: modes.clone(),
                    })),
                }
            })
            .collect();
        c.apply(pb::ApplyRequest {
            session_id: session.to_string(),
            operations: ops,
            include_metrics: false,
            sequence: 0,
        })
        .await?;
    }
    Ok(())
}

/// Closes a session (retried: closing a huge one runs many reap rounds, any
/// of which may time out on a loaded machine; closing is idempotent).
async fn close(url: &str, session: &str) -> anyhow::Result<()> {
    let mut c = ConnectionServiceClient::new(channel(url).await?);
    let mut last = None;
    for _ in 0..5 {
        match c
            .close_session(pb::CloseSessionRequest {
                session_id: session.to_string(),
            })
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| anyhow::anyhow!("close failed"), anyhow::Error::from))
}

async fn size_get(load: Load, connections: usize) -> anyhow::Result<()> {
    let run = std::process::id();
    let session = format!("size-{run}");
    let big = format!("size:{run}:big");
    let small = format!("size:{run}:small");
    fill(&load.url, &session, connections, &[pb::Mode::Subscribe], |i| {
        (format!("s{run}-{i}"), big.clone())
    })
    .await?;
    fill(&load.url, &format!("{session}-s"), 1, &[pb::Mode::Subscribe], |_| {
        (format!("s{run}-one"), small.clone())
    })
    .await?;
    let mut p50 = Vec::new();
    for ch_name in [small.clone(), big.clone()] {
        let mut stats = run_load(&load, move |ch, _, _| {
            let ch_name = ch_name.clone();
            async move {
                OccupancyServiceClient::new(ch)
                    .get_occupancy(pb::GetOccupancyRequest { channel: ch_name })
                    .await?;
                Ok(1)
            }
        })
        .await?;
        p50.push(stats.p(0.5));
    }
    println!(
        "RESULT scenario=size-get small_p50_ms={:.3} big_p50_ms={:.3} ratio={:.3} connections={connections}",
        p50[0],
        p50[1],
        p50[1] / p50[0]
    );
    close(&load.url, &session).await?;
    close(&load.url, &format!("{session}-s")).await
}

async fn size_list(load: Load, channels: usize) -> anyhow::Result<()> {
    let run = std::process::id();
    let small_n = (channels / 100).max(100);
    let session = format!("list-{run}");
    fill(&load.url, &format!("{session}-s"), small_n, &[], |i| {
        (format!("ls{run}-{i}"), format!("ls{run}:{i:07}"))
    })
    .await?;
    let mut p50 = Vec::new();
    let measure = |prefix: String| {
        let load = load.clone();
        async move {
            let mut stats = run_load(&load, move |ch, w, i| {
                let prefix = prefix.clone();
                async move {
                    // a page from a random point of the walk
                    let start = format!("{prefix}{}", mix(w as u64, i) % 10);
                    OccupancyServiceClient::new(ch)
                        .list_channels(pb::ListChannelsRequest {
                            prefix: start,
                            limit: 100,
                            ..Default::default()
                        })
                        .await?;
                    Ok(1)
                }
            })
            .await?;
            Ok::<f64, anyhow::Error>(stats.p(0.5))
        }
    };
    p50.push(measure(format!("ls{run}:")).await?);
    fill(&load.url, &session, channels, &[], |i| {
        (format!("lb{run}-{i}"), format!("lb{run}:{i:07}"))
    })
    .await?;
    p50.push(measure(format!("lb{run}:")).await?);
    println!(
        "RESULT scenario=size-list small_p50_ms={:.3} big_p50_ms={:.3} ratio={:.3} channels={channels} small_channels={small_n}",
        p50[0],
        p50[1],
        p50[1] / p50[0]
    );
    close(&load.url, &session).await?;
    close(&load.url, &format!("{session}-s")).await
}

async fn fanout(load: Load, streams: usize, channel_count: usize) -> anyhow::Result<()> {
    let run = std::process::id();
    let names: Vec<String> = (0..channel_count).map(|i| format!("fan:{run}:{i}")).collect();
    let mut conns = Vec::new();
    for _ in 0..streams.div_ceil(100) {
        conns.push(channel(&load.url).await?);
    }
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut readers = Vec::new();
    for i in 0..streams {
        let mut s = OccupancyServiceClient::new(conns[i / 100].clone())
            .subscribe_occupancy(pb::SubscribeOccupancyRequest {
                channels: vec![names[i % channel_count].clone()],
                ..Default::default()
            })
            .await?
            .into_inner();
        let received = received.clone();
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    m = s.message() => match m {
                        Ok(Some(_)) => { received.fetch_add(1, std::sync::atomic::Ordering::Relaxed); }
                        _ => return,
                    }
                }
            }
        }));
    }
    // wait for the snapshots
    let t = Instant::now();
    while received.load(std::sync::atomic::Ordering::Relaxed) < streams as u64 && t.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let base = received.load(std::sync::atomic::Ordering::Relaxed);
    let writer_names = names.clone();
    let changes = run_load(
        &Load {
            in_flight: 2,
            ..load.clone()
        },
        move |ch, w, i| {
            let names = writer_names.clone();
            async move {
                let ops: Vec<pb::Operation> = names
                    .iter()
                    .map(|n| op(if i % 2 == 0 { 0 } else { 3 }, format!("f{run}-w{w}"), n.clone()))
                    .collect();
                let n = ops.len() as u64;
                ConnectionServiceClient::new(ch)
                    .apply(pb::ApplyRequest {
                        session_id: format!("fan-{run}-w{w}"),
                        operations: ops,
                        include_metrics: false,
                        sequence: 0,
                    })
                    .await?;
                Ok(n)
            }
        },
    )
    .await?;
    // let the last events drain
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = received.load(std::sync::atomic::Ordering::Relaxed) - base;
    stop.cancel();
    for r in readers {
        let _ = r.await;
    }
    let secs = changes.elapsed.as_secs_f64();
    println!(
        "RESULT scenario=fanout rate={:.0} streams={streams} channels={channel_count} changes_per_s={:.0} delivered={delivered}",
        delivered as f64 / secs,
        changes.ops as f64 / secs
    );
    Ok(())
}

async fn footprint(load: Load, redis_url: String, count: usize) -> anyhow::Result<()> {
    let client = redis::Client::open(redis_url.as_str())?;
    let mut r = client.get_multiplexed_async_connection().await?;
    let used = |info: String| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let run = std::process::id();
    let session = format!("foot-{run}");
    let before = used(redis::cmd("INFO").arg("memory").query_async(&mut r).await?);
    fill(
        &load.url,
        &session,
        count,
        &[pb::Mode::Presence, pb::Mode::Subscribe],
        |i| (format!("f{run}-{i}"), format!("foot:{run}:{}", i % 10_000)),
    )
    .await?;
    let attached = used(redis::cmd("INFO").arg("memory").query_async(&mut r).await?);
    let mut c = ConnectionServiceClient::new(channel(&load.url).await?);
    for start in (0..count).step_by(10_000) {
        let ops = (start..(start + 10_000).min(count))
            .map(|i| op(1, format!("f{run}-{i}"), format!("foot:{run}:{}", i % 10_000)))
            .map(|mut o| {
                if let Some(pb::operation::Op::Enter(e)) = o.op.as_mut() {
                    e.client_id = format!("user-{}", start / 10_000);
                }
                o
            })
            .collect();
        c.apply(pb::ApplyRequest {
            session_id: session.clone(),
            operations: ops,
            include_metrics: false,
            sequence: 0,
        })
        .await?;
    }
    let entered = used(redis::cmd("INFO").arg("memory").query_async(&mut r).await?);
    println!(
        "RESULT scenario=footprint bytes_per_attachment={:.0} bytes_per_member={:.0} count={count}",
        attached.saturating_sub(before) as f64 / count as f64,
        entered.saturating_sub(attached) as f64 / count as f64
    );
    close(&load.url, &session).await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Apply { load, batch, channels } => apply(load, batch, channels).await,
        Scenario::Unary { load } => unary(load).await,
        Scenario::Get { load } => get(load).await,
        Scenario::BatchGet { load, size } => batch_get(load, size).await,
        Scenario::SizeGet { load, connections } => size_get(load, connections).await,
        Scenario::SizeList { load, channels } => size_list(load, channels).await,
        Scenario::Fanout {
            load,
            streams,
            channels,
        } => fanout(load, streams, channels).await,
        Scenario::Footprint { load, redis_url, count } => footprint(load, redis_url, count).await,
        Scenario::Latency {
            a,
            b,
            subscribers,
            changes,
            rate,
        } => latency(a, b, subscribers, changes, rate).await,
    }
}
