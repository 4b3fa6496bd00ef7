//! Load generator for the occupancy service.
//!
//! `occupancy-bench latency --a URL --b URL`: end-to-end latency of live
//! occupancy, from an Attach returning on replica A to the event arriving at
//! each of N subscribers on replica B.

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

#[derive(Subcommand)]
enum Scenario {
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
        "latency attach(A) -> event(B): subscribers={subscribers} changes={changes} rate={rate}/s samples={} missing={missing} p50={:.2}ms p99={:.2}ms max={:.2}ms",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        samples[samples.len() - 1]
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Latency {
            a,
            b,
            subscribers,
            changes,
            rate,
        } => latency(a, b, subscribers, changes, rate).await,
    }
}
