//! The SSE scenario: delivery over server-sent events to many
//! EventSource-like clients.

use std::time::Duration;

use anyhow::{bail, Context};
use eventsource_stream::Eventsource;
use futures::{StreamExt, TryStreamExt};
use occupancy::http::json::OccupancyEventJson;
use tokio_util::sync::CancellationToken;

use crate::latency::{Changes, Run};

/// Streams opened at once: enough to open a thousand in about a second
/// without a burst of connection attempts overflowing the listener's
/// backlog.
const OPENING: usize = 64;

/// The SSE scenario: `changes.subscribers` clients of
/// `GET /channels/{id}/occupancy/stream` on replica B's HTTP side
/// (`http`), one HTTP/1.1 connection each as a browser's `EventSource`
/// holds, subscriber `i` following channel `i % channels`; the changes and
/// the figures are the gRPC latency scenario's.
pub(crate) async fn sse(changes: Changes, http: String) -> anyhow::Result<()> {
    let run = Run::new("sse", changes);
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .build()?;
    let names = run.names().to_vec();
    // each stream with its first event (the snapshot) read, so the
    // subscription is in place before the first change
    let streams: Vec<_> = futures::stream::iter(0..run.subscribers())
        .map(|i| {
            let url = format!("{http}/channels/{}/occupancy/stream", names[i % names.len()]);
            let client = client.clone();
            async move {
                let res = client
                    .get(&url)
                    .header("accept", "text/event-stream")
                    .send()
                    .await
                    .with_context(|| format!("GET {url}"))?
                    .error_for_status()?;
                let mut events = res.bytes_stream().eventsource();
                match events.next().await {
                    Some(Ok(_)) => Ok(events),
                    Some(Err(e)) => bail!("{url}: {e}"),
                    None => bail!("{url} ended before its snapshot"),
                }
            }
        })
        .buffered(OPENING)
        .try_collect()
        .await?;
    let stop = CancellationToken::new();
    let readers = streams
        .into_iter()
        .enumerate()
        .map(|(i, events)| {
            let name = names[i % names.len()].clone();
            let events = events.take_while(|e| futures::future::ready(e.is_ok())).map(move |e| {
                let e = e.ok()?;
                let ev: OccupancyEventJson = serde_json::from_str(&e.data).ok()?;
                (ev.channel == name).then_some(ev.data.metrics.connections)
            });
            run.reader(i, Box::pin(events), stop.clone())
        })
        .collect();
    run.measure("sse", readers, stop).await
}
