//! Load generator for the occupancy service. Each scenario prints one
//! `RESULT scenario=NAME key=value ...` line that `scripts/bench` collects
//! into its table.
//!
//! - `apply`: Apply batches of 100 operations over 10,000 channels, each
//!   taking a (connection, channel) pair one step through attach → enter →
//!   leave → detach.
//! - `unary`: Attach/Detach calls from 4 front ends (sessions).
//! - `get`, `batch-get`: reads; `--key` on `get`, `unary` (and any request
//!   scenario) sends a credential and names the result `NAME-auth`.
//! - `size-get`, `size-list`: read cost on a huge channel, and a list page
//!   with many channels, against small ones.
//! - `fanout`: events delivered per second across many streams.
//! - `latency`: Attach sent on replica A → event at each subscriber on B,
//!   subscribers spread over `--channels`.
//! - `sse`: the same over server-sent events, each subscriber an HTTP
//!   connection to B's HTTP side.
//! - `rest-get`: REST `GET /channels/{id}` through h2load.
//! - `idle-streams`: a replica's resident memory with many idle streams.
//! - `webhooks`: the `apply` load without integration rules and with 10
//!   (every channel, batched, to a receiver in this process), and the
//!   events delivered per second until the rules' queues drain.
//! - `footprint`: Redis memory per attachment and per presence member.

use clap::{Parser, Subcommand};

mod fanout;
mod latency;
mod load;
mod memory;
mod procfs;
mod reads;
mod receiver;
mod rest;
mod sse;
mod streams;
mod webhooks;
mod writes;

use load::Load;

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
    /// Apply without and with integration rules, and webhook events
    /// delivered per second.
    Webhooks {
        #[command(flatten)]
        load: Load,
        #[command(flatten)]
        opts: webhooks::Webhooks,
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
        #[command(flatten)]
        changes: latency::Changes,
        /// Replica B (subscribers).
        #[arg(long, default_value = "http://127.0.0.1:50052")]
        b: String,
    },
    /// Attach sent on replica A → event on every SSE client of replica B.
    Sse {
        #[command(flatten)]
        changes: latency::Changes,
        /// Replica B's HTTP side (`--http-listen`).
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        b_http: String,
    },
    /// REST `GET /channels/{id}` of random channels, through h2load over
    /// HTTP/1.1 (`--url` is the HTTP side; `--in-flight` connections).
    RestGet {
        #[command(flatten)]
        load: Load,
    },
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
        Scenario::Apply { load, batch, channels } => writes::apply(load, batch, channels).await,
        Scenario::Unary { load } => writes::unary(load).await,
        Scenario::Get { load } => reads::get(load).await,
        Scenario::BatchGet { load, size } => reads::batch_get(load, size).await,
        Scenario::SizeGet { load, connections } => reads::size_get(load, connections).await,
        Scenario::SizeList { load, channels } => reads::size_list(load, channels).await,
        Scenario::Fanout {
            load,
            streams,
            channels,
            writers,
            pid,
        } => fanout::fanout(load, streams, channels, writers, pid).await,
        Scenario::IdleStreams {
            url,
            pid,
            streams,
            channels,
        } => memory::idle_streams(url, pid, streams, channels).await,
        Scenario::Webhooks { load, opts } => webhooks::webhooks(load, opts).await,
        Scenario::Footprint { load, redis_url, count } => memory::footprint(load, redis_url, count).await,
        Scenario::Latency { changes, b } => latency::latency(changes, b).await,
        Scenario::Sse { changes, b_http } => sse::sse(changes, b_http).await,
        Scenario::RestGet { load } => rest::rest_get(load).await,
    }
}
