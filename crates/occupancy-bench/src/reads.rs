//! Read scenarios: `get`, `batch-get`, and the size scenarios comparing a
//! read on a huge channel (or a list page among many channels) with one on
//! a small setup.

use occupancy::proto::v1 as pb;
use pb::occupancy_service_client::OccupancyServiceClient;

use crate::load::{mix, run_load, Load};
use crate::writes::{close, fill};

/// GetOccupancy of random channels among the 10,000 the writes use.
pub(crate) async fn get(load: Load) -> anyhow::Result<()> {
    let mut stats = run_load(&load, move |ch, w, i| async move {
        OccupancyServiceClient::new(ch)
            .get_occupancy(pb::GetOccupancyRequest {
                channel: format!("bench:{}", mix(w as u64, i) % 10_000),
            })
            .await?;
        Ok(1)
    })
    .await?;
    stats.print(&load.name("get"), "");
    Ok(())
}

/// BatchGetOccupancy of `size` random channels, counted per channel.
pub(crate) async fn batch_get(load: Load, size: usize) -> anyhow::Result<()> {
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
    stats.print(&load.name("batch-get"), &format!(" size={size} unit=channels"));
    Ok(())
}

/// GetOccupancy p50 on a channel with `connections` connections against
/// one with a single connection.
pub(crate) async fn size_get(load: Load, connections: usize) -> anyhow::Result<()> {
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

/// A ListChannels page (limit 100) with `channels` active channels against
/// one with a hundredth of them (at least 100).
pub(crate) async fn size_list(load: Load, channels: usize) -> anyhow::Result<()> {
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
