//! The fan-out scenario: events delivered per second across many streams
//! on one replica.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use occupancy::proto::v1 as pb;
use pb::connection_service_client::ConnectionServiceClient;
use tokio_util::sync::CancellationToken;

use crate::load::{run_load, Load};
use crate::procfs;
use crate::streams::{open_streams, subscribe_raw};
use crate::writes::{apply_request, close, op};

/// `streams` SubscribeOccupancy streams on one replica, stream `i`
/// following channel `i % channels`; `writers` Apply calls in flight (each
/// of one operation per channel, attaching then detaching the writer's
/// connection, so every operation changes its channel) for `duration`.
/// Reports the events received per second across all streams while
/// writing (plus what arrived within 500 ms after), and the changes per
/// second the writers made: at most `changes × streams / channels` events
/// can be delivered; fewer means the service (or the reading client)
/// coalesced, which it does once a subscriber falls 1,024 events behind.
/// With `pid`, the CPU time per delivered event of that replica
/// (`server_`) is reported beside this process's (`client_`).
pub(crate) async fn fanout(
    load: Load,
    streams: usize,
    channel_count: usize,
    writers: usize,
    pid: Option<u32>,
) -> anyhow::Result<()> {
    let run = std::process::id();
    let names: Vec<String> = (0..channel_count).map(|i| format!("fan:{run}:{i}")).collect();
    let opened = open_streams(&load.url, &names, streams, subscribe_raw).await?;
    let received = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
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
    let watch: Vec<(String, u32)> = pid.map(|p| ("server".to_string(), p)).into_iter().collect();
    let cpu = procfs::Window::start(&watch)?;
    let writer_names = Arc::new(names);
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
                    .apply(apply_request(format!("fan-{run}-w{w}"), ops))
                    .await?;
                Ok(n)
            }
        },
    )
    .await?;
    // let the last events drain
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = received.load(Ordering::Relaxed);
    let mut cpu_line = String::new();
    // this process is last ("gen"): the client, printed first
    for (name, t) in cpu.end()?.into_iter().rev() {
        let side = if name == "gen" { "client" } else { "server" };
        let per_event = t.as_secs_f64() * 1e6 / delivered.max(1) as f64;
        cpu_line += &format!(" {side}_cpu_us_per_event={per_event:.2}");
    }
    stop.cancel();
    for r in readers {
        // a reader ends by itself; a panic in one is not a result
        if let Err(e) = r.await {
            anyhow::bail!("a stream reader failed: {e}");
        }
    }
    let secs = changes.elapsed.as_secs_f64();
    let possible = changes.ops * (streams / channel_count.max(1)) as u64;
    println!(
        "RESULT scenario=fanout rate={:.0} streams={streams} channels={channel_count} writers={writers} changes_per_s={:.0} delivered={delivered} delivered_share={:.3}{cpu_line}",
        delivered as f64 / secs,
        changes.ops as f64 / secs,
        delivered as f64 / possible.max(1) as f64
    );
    for w in 0..writers {
        close(&load.url, &format!("fan-{run}-w{w}")).await?;
    }
    Ok(())
}
