//! The latency scenario: a change on replica A to its event at each
//! subscriber on replica B.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use occupancy::proto::v1 as pb;
use pb::connection_service_client::ConnectionServiceClient;

use crate::load::{channel, percentile};
use crate::streams::{open_streams, subscribe};
use crate::writes::close;

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
pub(crate) async fn latency(
    a: String,
    b: String,
    subscribers: usize,
    channel_count: usize,
    changes: usize,
    rate: u32,
    in_flight: usize,
) -> anyhow::Result<()> {
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
