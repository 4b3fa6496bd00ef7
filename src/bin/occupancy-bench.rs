//! Load generator for the occupancy service. Each scenario prints one
//! `RESULT scenario=NAME key=value ...` line that `scripts/bench` collects
//! into its table.
//!
//! - `apply`: Apply batches of 100 operations over 10,000 channels, each
//!   taking a (connection, channel) pair one step through attach → enter →
//!   leave → detach.
//! - `unary`: Attach/Detach calls from 4 front ends (sessions).
//! - `get`, `batch-get`: reads.
//! - `size-get`, `size-list`: read cost on a huge channel, and a list page
//!   with many channels, against small ones.
//! - `fanout`: events delivered per second across many streams.
//! - `latency`: Attach returns on replica A → event at each subscriber on B,
//!   subscribers spread over `--channels`.
//! - `idle-streams`: a replica's resident memory with many idle streams.
//! - `footprint`: Redis memory per attachment and per presence member.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use occupancy::proto::v1 as pb;
use pb::connection_service_client::ConnectionServiceClient;
use pb::occupancy_service_client::OccupancyServiceClient;
use tonic::transport::{Channel, Endpoint};

/// The same allocator as the service: the load generator shares the
/// machine with it, so its own cost is kept down.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "occupancy-bench", about = "load generator for the occupancy service")]
struct Cli {
    /// Runtime threads of the load generator: 1 runs every worker on one
    /// thread (no cross-thread wake-ups, as redis-benchmark's single event
    /// loop); 0 uses one per core.
    #[arg(long, global = true, default_value_t = 0)]
    threads: usize,
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
    /// NAME=PID of a process whose CPU time per operation over the
    /// measured window the result line reports (`cpu_us_NAME=`), with the
    /// load generator's own (`cpu_us_gen=`); repeatable.
    #[arg(long = "cpu-of", value_parser = parse_cpu_of)]
    cpu_of: Vec<(String, u32)>,
}

fn parse_cpu_of(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or("expected NAME=PID")?;
    let pid = pid.parse().map_err(|e| format!("bad pid {pid}: {e}"))?;
    Ok((name.to_string(), pid))
}

/// CPU time (user and system, all threads) of a process so far, from
/// `/proc/PID/stat`; `None` reads this process.
fn cpu_time(pid: Option<u32>) -> anyhow::Result<Duration> {
    let path = pid.map_or_else(|| "/proc/self/stat".to_string(), |p| format!("/proc/{p}/stat"));
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // the command name (field 2) may hold spaces: count from its ')'
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime, fields 14 and 15, in USER_HZ ticks (100 per second
    // in the Linux ABI)
    let mut ticks = 0u64;
    for f in fields.get(11..13).context("short stat")? {
        ticks += f
            .parse::<u64>()
            .with_context(|| format!("bad tick count {f} in {path}"))?;
    }
    Ok(Duration::from_millis(ticks * 10))
}

/// CPU time of each watched process, and of this one as `gen`.
fn cpu_snapshot(watch: &[(String, u32)]) -> anyhow::Result<Vec<(String, Duration)>> {
    let mut out = Vec::with_capacity(watch.len() + 1);
    for (name, pid) in watch {
        out.push((name.clone(), cpu_time(Some(*pid))?));
    }
    out.push(("gen".to_string(), cpu_time(None)?));
    Ok(out)
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
        /// Apply calls in flight.
        #[arg(long, default_value_t = 2)]
        writers: usize,
        /// Process id of the replica behind `--url`: also report the CPU
        /// time it spent per delivered event (and so does this process).
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Server resident memory with many idle SubscribeOccupancy streams.
    IdleStreams {
        /// The service.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        url: String,
        /// Process id of the replica behind `--url`, whose VmRSS is read.
        #[arg(long)]
        pid: u32,
        /// Streams to open.
        #[arg(long, default_value_t = 10_000)]
        streams: usize,
        /// Channels the streams are spread over.
        #[arg(long, default_value_t = 10_000)]
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
        /// Subscribers on B; subscriber `i` follows channel `i % channels`.
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Channels the subscribers are spread over; changes go round-robin
        /// over them.
        #[arg(long, default_value_t = 1)]
        channels: usize,
        /// Changes to measure.
        #[arg(long, default_value_t = 500)]
        changes: usize,
        /// Changes per second (Attach calls started on schedule).
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Attach calls in flight at most.
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
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

/// A SubscribeOccupancy stream whose messages are handed over undecoded.
type RawStream = tonic::Streaming<bytes::Bytes>;

/// The codec of [`RawStream`]: encodes the request with prost and hands
/// each response message over as its bytes, so the fan-out readers count
/// messages without paying for decoding them (the load generator shares
/// the machine with the service).
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = pb::SubscribeOccupancyRequest;
    type Decode = bytes::Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = pb::SubscribeOccupancyRequest;
    type Error = tonic::Status;

    fn encode(&mut self, item: Self::Item, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        prost::Message::encode(&item, dst).map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<bytes::Bytes>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Opens a SubscribeOccupancy stream of `name` whose messages are not
/// decoded.
async fn subscribe_raw(conn: Channel, name: String) -> anyhow::Result<RawStream> {
    let mut grpc = tonic::client::Grpc::new(conn);
    grpc.ready().await.context("connection not ready")?;
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/occupancy.v1.OccupancyService/SubscribeOccupancy");
    let req = pb::SubscribeOccupancyRequest {
        channels: vec![name],
        ..Default::default()
    };
    Ok(grpc
        .server_streaming(tonic::Request::new(req), path, RawCodec)
        .await?
        .into_inner())
}

/// Opens a SubscribeOccupancy stream of `name`.
async fn subscribe(
    conn: Channel,
    name: String,
) -> anyhow::Result<tonic::Streaming<occupancy::fanout::wire::SubscribeOccupancyResponse>> {
    Ok(OccupancyServiceClient::new(conn)
        .subscribe_occupancy(pb::SubscribeOccupancyRequest {
            channels: vec![name],
            ..Default::default()
        })
        .await?
        .into_inner())
}

/// Opens `count` SubscribeOccupancy streams on `url` with `open`, stream
/// `i` following `names[i % names.len()]`, 100 streams per HTTP/2
/// connection (hyper allows 200 concurrent streams per connection by
/// default), opened concurrently across connections. Returns the streams in
/// order, each with its first message (the snapshot) already read.
async fn open_streams<T, F, Fut>(
    url: &str,
    names: &[String],
    count: usize,
    open: F,
) -> anyhow::Result<Vec<tonic::Streaming<T>>>
where
    T: Send + 'static,
    F: Fn(Channel, String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<tonic::Streaming<T>>> + Send,
{
    const PER_CONN: usize = 100;
    let mut groups = Vec::new();
    for first in (0..count).step_by(PER_CONN) {
        let conn = channel(url).await?;
        let names: Vec<String> = (first..(first + PER_CONN).min(count))
            .map(|i| names[i % names.len()].clone())
            .collect();
        let open = open.clone();
        groups.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                let mut s = open(conn.clone(), name).await?;
                s.message().await?.context("stream ended before its snapshot")?;
                out.push(s);
            }
            Ok::<_, anyhow::Error>(out)
        }));
    }
    let mut streams = Vec::with_capacity(count);
    for g in groups {
        streams.extend(g.await??);
    }
    Ok(streams)
}

/// The latency scenario: `subscribers` streams on replica B, subscriber `i`
/// following channel `i % channels`; `changes` Attach calls on replica A,
/// change `j` attaching a new connection to channel `j % channels`
/// (round-robin), issued on a fixed schedule of `rate` per second (open
/// loop: a call is started when it is due, whatever earlier calls are
/// doing, with at most `in_flight` outstanding). Each Attach answers the
/// channel's connection count after that change, which identifies the
/// change exactly, also when calls on one channel overlap. A sample is,
/// for every subscriber of the channel, the time from the moment that
/// Attach returned on A to the moment the subscriber received the event
/// carrying that count (0 if the event came first; counted as `early`).
/// A count no event carried is `missing`: lost, or merged, when two
/// Attach calls on one channel left A in the same group commit call and
/// so share one event with the final count.
/// Deliveries per second are `rate × subscribers / channels`.
async fn latency(
    a: String,
    b: String,
    subscribers: usize,
    channel_count: usize,
    changes: usize,
    rate: u32,
    in_flight: usize,
) -> anyhow::Result<()> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    let channel_count = channel_count.clamp(1, subscribers.max(1));
    let run = format!("lat-{}", std::process::id());
    let names: Vec<String> = (0..channel_count).map(|c| format!("{run}:room{c}")).collect();
    let index: Arc<HashMap<String, usize>> = Arc::new(names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect());
    let start = Instant::now();
    let streams = open_streams(&b, &names, subscribers, subscribe).await?;
    // the connection count each channel reaches once every change is in
    let expected = |c: usize| (changes + channel_count - 1 - c) / channel_count;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut readers = Vec::with_capacity(subscribers);
    for (i, mut s) in streams.into_iter().enumerate() {
        let c = i % channel_count;
        let want = expected(c) as u32;
        let index = index.clone();
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut got: Vec<(u32, Duration)> = Vec::with_capacity(want as usize);
            while got.last().is_none_or(|(n, _)| *n < want) {
                let m = tokio::select! {
                    () = stop.cancelled() => break,
                    m = s.message() => m,
                };
                let Ok(Some(r)) = m else { break };
                let at = start.elapsed();
                if let Ok(Some(e)) = r.into_event() {
                    if index.get(&e.channel) == Some(&c) {
                        if let Some(m) = e.metrics {
                            got.push((m.connections, at));
                        }
                    }
                }
            }
            (c, got)
        }));
    }
    // the writers: Attach calls started on schedule over a few connections
    let mut wconns = Vec::new();
    for _ in 0..in_flight.div_ceil(16).max(1) {
        wconns.push(channel(&a).await?);
    }
    let returned: Arc<Mutex<HashMap<(usize, u32), Duration>>> = Arc::new(Mutex::new(HashMap::new()));
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
    let mut calls = tokio::task::JoinSet::new();
    let write_start = Instant::now();
    let period = Duration::from_secs(1).as_secs_f64() / f64::from(rate.max(1));
    for j in 0..changes {
        let due = write_start + Duration::from_secs_f64(period * j as f64);
        tokio::time::sleep_until(due.into()).await;
        let permit = permits.clone().acquire_owned().await?;
        let c = j % channel_count;
        let mut writer = ConnectionServiceClient::new(wconns[j % wconns.len()].clone());
        let req = pb::AttachRequest {
            session_id: run.clone(),
            connection_id: format!("c{j}"),
            channel: names[c].clone(),
            modes: vec![pb::Mode::Subscribe as i32],
        };
        let returned = returned.clone();
        calls.spawn(async move {
            let r = writer.attach(req).await;
            let at = start.elapsed();
            drop(permit);
            let n = r?.into_inner().metrics.map_or(0, |m| m.connections);
            if let Ok(mut map) = returned.lock() {
                map.insert((c, n), at);
            }
            Ok::<_, anyhow::Error>(())
        });
        // reap finished calls as we go, to surface errors early
        while let Some(r) = calls.try_join_next() {
            r??;
        }
    }
    while let Some(r) = calls.join_next().await {
        r??;
    }
    let write_secs = write_start.elapsed().as_secs_f64();
    // give the last events time to arrive, then stop whoever still waits
    let stopper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            stop.cancel();
        })
    };
    let mut results = Vec::with_capacity(readers.len());
    for r in readers {
        results.push(r.await?);
    }
    stopper.abort();
    let returned = Arc::try_unwrap(returned)
        .map_err(|_| anyhow::anyhow!("writers still running"))?
        .into_inner()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    let mut samples = Vec::with_capacity(subscribers * changes / channel_count + 1);
    let (mut missing, mut early) = (0usize, 0usize);
    for (c, got) in results {
        let mut seen = 0usize;
        for (n, at) in got {
            if let Some(t) = returned.get(&(c, n)) {
                seen += 1;
                if at < *t {
                    early += 1;
                }
                samples.push(at.saturating_sub(*t).as_secs_f64() * 1000.0);
            }
        }
        missing += expected(c).saturating_sub(seen);
    }
    close(&a, &run).await?;
    if samples.is_empty() {
        bail!("no events received");
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "RESULT scenario=latency subscribers={subscribers} channels={channel_count} changes={changes} change_rate={rate} achieved_rate={:.0} deliveries_per_s={:.0} in_flight={in_flight} samples={} missing={missing} early={early} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        changes as f64 / write_secs,
        changes as f64 / write_secs * subscribers as f64 / channel_count as f64,
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
    /// CPU time of each watched process over the measured window.
    cpu: Vec<(String, Duration)>,
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
    let watching = !load.cpu_of.is_empty();
    let cpu_before = if watching {
        cpu_snapshot(&load.cpu_of)?
    } else {
        Vec::new()
    };
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
        cpu: Vec::new(),
    };
    for w in workers {
        let (ops, lat) = w.await??;
        stats.ops += ops;
        stats.latencies_ms.extend(lat);
    }
    stats.elapsed = start.elapsed();
    if watching {
        let after = cpu_snapshot(&load.cpu_of)?;
        stats.cpu = after
            .into_iter()
            .zip(cpu_before)
            .map(|((name, a), (_, b))| (name, a.saturating_sub(b)))
            .collect();
    }
    Ok(stats)
}

fn result(scenario: &str, stats: &mut Stats, extra: &str) {
    let rate = stats.rate();
    let (p50, p99) = (stats.p(0.5), stats.p(0.99));
    let mut cpu = String::new();
    for (name, t) in &stats.cpu {
        let per_op = t.as_secs_f64() * 1e6 / stats.ops.max(1) as f64;
        cpu.push_str(&format!(" cpu_us_{name}={per_op:.1}"));
    }
    println!("RESULT scenario={scenario} rate={rate:.0} p50_ms={p50:.3} p99_ms={p99:.3}{extra}{cpu}");
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

/// (connection, channel) slots per `apply` worker: 512 connections with four
/// channels each.
const APPLY_SLOTS: u64 = 2048;

async fn apply(load: Load, batch: usize, channels: usize) -> anyhow::Result<()> {
    let run = std::process::id();
    let mut stats = run_load(&load, move |ch, w, i| async move {
        // Each worker cycles APPLY_SLOTS (connection, channel) slots, four
        // channels per connection, through attach → enter → leave →
        // detach, so every operation changes something; a batch visits
        // its slots in a scattered order.
        let ops: Vec<pb::Operation> = (0..batch as u64)
            .map(|k| {
                let x = i * batch as u64 + k;
                let slot = (x % APPLY_SLOTS) * 1021 % APPLY_SLOTS;
                let conn = format!("b{run}-w{w}-c{}", slot / 4);
                let channel = format!("bench:{}", mix(w as u64, slot) % channels as u64);
                op(x / APPLY_SLOTS, conn, channel)
            })
            .collect();
        ConnectionServiceClient::new(ch)
            .apply(pb::ApplyRequest {
                session_id: format!("bench-{run}-w{w}"),
                operations: ops,
                include_metrics: false,
                sequence: 0,
                session_epoch: 0,
            })
            .await?;
        Ok(batch as u64)
    })
    .await?;
    result("apply", &mut stats, &format!(" batch={batch} channels={channels}"));
    Ok(())
}

/// Front ends (sessions) the `unary` workers share, as a few front end
/// processes would: each worker writes its own connection.
const UNARY_FRONT_ENDS: usize = 4;

async fn unary(load: Load) -> anyhow::Result<()> {
    let run = std::process::id();
    let mut stats = run_load(&load, move |ch, w, i| async move {
        let mut c = ConnectionServiceClient::new(ch);
        let conn = format!("u{run}-w{w}");
        let channel = format!("bench:{}", mix(w as u64, i / 2) % 10_000);
        if i % 2 == 0 {
            c.attach(pb::AttachRequest {
                session_id: format!("bench-{run}-f{}", w % UNARY_FRONT_ENDS),
                connection_id: conn,
                channel,
                modes: vec![pb::Mode::Subscribe as i32],
            })
            .await?;
        } else {
            c.detach(pb::DetachRequest {
                session_id: format!("bench-{run}-f{}", w % UNARY_FRONT_ENDS),
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
            session_epoch: 0,
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

/// The fan-out scenario: `streams` SubscribeOccupancy streams on one
/// replica, stream `i` following channel `i % channels`; `writers` Apply
/// calls in flight (each of one operation per channel, attaching then
/// detaching the writer's connection, so every operation changes its
/// channel) for `duration`. Reports the events received per second across
/// all streams while writing (plus what arrived within 500 ms after), and
/// the changes per second the writers made: at most
/// `changes × streams / channels` events can be delivered; fewer means the
/// service (or the reading client) coalesced, which it does once a
/// subscriber falls 1,024 events behind.
async fn fanout(
    load: Load,
    streams: usize,
    channel_count: usize,
    writers: usize,
    pid: Option<u32>,
) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let run = std::process::id();
    let names: Vec<String> = (0..channel_count).map(|i| format!("fan:{run}:{i}")).collect();
    let opened = open_streams(&load.url, &names, streams, subscribe_raw).await?;
    let received = std::sync::Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut readers = Vec::new();
    for mut s in opened {
        let received = received.clone();
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let stopped = stop.cancelled();
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    biased;
                    m = s.message() => match m {
                        Ok(Some(_)) => { received.fetch_add(1, Ordering::Relaxed); }
                        _ => return,
                    },
                    () = &mut stopped => return,
                }
            }
        }));
    }
    let cpu_before = (pid.map(cpu_seconds).transpose()?, cpu_seconds(std::process::id())?);
    let writer_names = std::sync::Arc::new(names);
    let changes = run_load(
        &Load {
            in_flight: writers,
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
                        session_epoch: 0,
                    })
                    .await?;
                Ok(n)
            }
        },
    )
    .await?;
    // let the last events drain
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = received.load(Ordering::Relaxed);
    let per_event = |before: f64, after: f64| (after - before) * 1e6 / delivered.max(1) as f64;
    let mut cpu = format!(
        " client_cpu_us_per_event={:.2}",
        per_event(cpu_before.1, cpu_seconds(std::process::id())?)
    );
    if let (Some(pid), Some(before)) = (pid, cpu_before.0) {
        cpu += &format!(" server_cpu_us_per_event={:.2}", per_event(before, cpu_seconds(pid)?));
    }
    stop.cancel();
    for r in readers {
        let _ = r.await;
    }
    let secs = changes.elapsed.as_secs_f64();
    let possible = changes.ops * (streams / channel_count.max(1)) as u64;
    println!(
        "RESULT scenario=fanout rate={:.0} streams={streams} channels={channel_count} writers={writers} changes_per_s={:.0} delivered={delivered} delivered_share={:.3}{cpu}",
        delivered as f64 / secs,
        changes.ops as f64 / secs,
        delivered as f64 / possible.max(1) as f64
    );
    for w in 0..writers {
        close(&load.url, &format!("fan-{run}-w{w}")).await?;
    }
    Ok(())
}

/// CPU time (user and system) process `pid` has used, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("read /proc/{pid}/stat"))?;
    // fields after the command name (which may hold spaces), from field 3
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f
        .get(11..13)
        .context("short /proc stat")?
        .iter()
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    // USER_HZ is 100 on Linux
    Ok(ticks / 100.0)
}

/// Resident memory (VmRSS) of process `pid`, in bytes.
fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("read /proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")?;
    Ok(kb * 1024)
}

/// The idle-streams scenario: reads the replica's resident memory, opens
/// `streams` SubscribeOccupancy streams on it (stream `i` following channel
/// `i % channels`, each receiving its snapshot and then nothing), waits a
/// second, reads it again, and closes them.
async fn idle_streams(url: String, pid: u32, streams: usize, channel_count: usize) -> anyhow::Result<()> {
    let run = std::process::id();
    let names: Vec<String> = (0..channel_count.max(1)).map(|i| format!("idle:{run}:{i}")).collect();
    let before = rss_bytes(pid)?;
    let opened = open_streams(&url, &names, streams, subscribe).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_bytes(pid)?;
    drop(opened);
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "RESULT scenario=idle-rss streams={streams} channels={} before_mb={:.1} after_mb={:.1} per_stream_kb={:.1}",
        names.len(),
        mb(before),
        mb(after),
        after.saturating_sub(before) as f64 / 1024.0 / streams.max(1) as f64
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
            session_epoch: 0,
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = match cli.threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    runtime.block_on(run(cli.scenario))
}

async fn run(scenario: Scenario) -> anyhow::Result<()> {
    match scenario {
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
            writers,
            pid,
        } => fanout(load, streams, channels, writers, pid).await,
        Scenario::IdleStreams {
            url,
            pid,
            streams,
            channels,
        } => idle_streams(url, pid, streams, channels).await,
        Scenario::Footprint { load, redis_url, count } => footprint(load, redis_url, count).await,
        Scenario::Latency {
            a,
            b,
            subscribers,
            channels,
            changes,
            rate,
            in_flight,
        } => latency(a, b, subscribers, channels, changes, rate, in_flight).await,
    }
}
