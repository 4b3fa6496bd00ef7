//! Memory scenarios: a replica's resident memory with many idle streams,
//! and Redis memory per attachment and per presence member.

use std::time::Duration;

use occupancy::proto::v1 as pb;
use pb::connection_service_client::ConnectionServiceClient;

use crate::load::{conn, Credential, Load};
use crate::procfs::rss_bytes;
use crate::streams::{open_streams, subscribe};
use crate::writes::{apply_request, close, fill, op};

/// Reads the replica's resident memory, opens `streams` SubscribeOccupancy
/// streams on it (stream `i` following channel `i % channels`, each
/// receiving its snapshot and then nothing), waits a second, reads it
/// again, and closes them.
pub(crate) async fn idle_streams(url: String, pid: u32, streams: usize, channel_count: usize) -> anyhow::Result<()> {
    let run = std::process::id();
    let names: Vec<String> = (0..channel_count.max(1)).map(|i| format!("idle:{run}:{i}")).collect();
    let before = rss_bytes(pid)?;
    let opened = open_streams(&url, &names, streams, subscribe).await?;
    // the replica's allocations for a stream settle after its snapshot;
    // there is no signal for that, so a fixed pause
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

/// Redis `used_memory` from `INFO memory`.
async fn used_memory(r: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(r).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no used_memory in INFO memory"))
}

/// Attaches `count` connections over 10,000 channels, then enters each
/// into presence, reading Redis's memory before and after each step.
pub(crate) async fn footprint(load: Load, redis_url: String, count: usize) -> anyhow::Result<()> {
    let client = redis::Client::open(redis_url.as_str())?;
    let mut r = client.get_multiplexed_async_connection().await?;
    let run = std::process::id();
    let session = format!("foot-{run}");
    let before = used_memory(&mut r).await?;
    fill(
        &load.url,
        &session,
        count,
        &[pb::Mode::Presence, pb::Mode::Subscribe],
        |i| (format!("f{run}-{i}"), format!("foot:{run}:{}", i % 10_000)),
    )
    .await?;
    let attached = used_memory(&mut r).await?;
    let mut c = ConnectionServiceClient::new(conn(&load.url, &Credential::default()).await?);
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
        c.apply(apply_request(session.clone(), ops)).await?;
    }
    let entered = used_memory(&mut r).await?;
    println!(
        "RESULT scenario=footprint bytes_per_attachment={:.0} bytes_per_member={:.0} count={count}",
        attached.saturating_sub(before) as f64 / count as f64,
        entered.saturating_sub(attached) as f64 / count as f64
    );
    close(&load.url, &session).await
}
