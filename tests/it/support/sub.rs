//! A client-side subscription over gRPC: events with the stream's `live`
//! and heartbeat messages counted and skipped, and waits for conditions.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use occupancy::proto::v1 as pb;
use tonic::Streaming;

use crate::fixture::arr;
use crate::support::TestServer;

type Response = occupancy::fanout::wire::SubscribeOccupancyResponse;

/// A client-side subscription. Event readers skip the stream's `live`
/// and `heartbeat` messages, counting them.
pub struct Sub {
    stream: Streaming<Response>,
    /// `live` messages seen.
    pub lives: usize,
    /// Heartbeats seen.
    pub heartbeats: usize,
}

pub async fn subscribe(s: &TestServer, req: pb::SubscribeOccupancyRequest) -> Result<Sub, tonic::Status> {
    let stream = s.read().await.subscribe_occupancy(req).await?.into_inner();
    Ok(Sub::from_stream(stream))
}

pub fn req(channels: &[&str]) -> pb::SubscribeOccupancyRequest {
    pb::SubscribeOccupancyRequest {
        channels: channels.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    }
}

impl Sub {
    /// Wraps an open stream.
    pub fn from_stream(stream: Streaming<Response>) -> Self {
        Self {
            stream,
            lives: 0,
            heartbeats: 0,
        }
    }

    /// The next message of any kind, within `within`.
    pub async fn message_within(&mut self, within: Duration) -> Option<Result<Response, tonic::Status>> {
        match tokio::time::timeout(within, self.stream.message()).await {
            Err(_) => None,
            Ok(Ok(Some(r))) => Some(Ok(r)),
            Ok(Ok(None)) => panic!("stream ended"),
            Ok(Err(status)) => Some(Err(status)),
        }
    }

    /// The next event, within `within`.
    pub async fn next_within(&mut self, within: Duration) -> Option<Result<pb::OccupancyEvent, tonic::Status>> {
        let deadline = tokio::time::Instant::now() + within;
        // at most one live message, and heartbeats no more often than
        // every few ms: bounded
        for _ in 0..100_000 {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.message_within(left).await? {
                Err(status) => return Some(Err(status)),
                Ok(r) if r.live.is_some() => self.lives += 1,
                Ok(r) if r.heartbeat.is_some() => self.heartbeats += 1,
                Ok(r) => return Some(Ok(r.into_event().expect("decode").expect("an event"))),
            }
        }
        panic!("100,000 messages without an event");
    }

    /// The next event; panics after 10 s.
    pub async fn next(&mut self) -> pb::OccupancyEvent {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("an event within 10 s")
            .expect("an event, not an error")
    }

    /// Reads events until one satisfies `pred` (at most 10 s, 1,000,000
    /// events); returns every event read.
    pub async fn until(&mut self, mut pred: impl FnMut(&pb::OccupancyEvent) -> bool) -> Vec<pb::OccupancyEvent> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut out = Vec::new();
        for _ in 0..1_000_000 {
            let left = deadline.saturating_duration_since(Instant::now());
            let e = self
                .next_within(left)
                .await
                .unwrap_or_else(|| {
                    panic!(
                        "condition not met within 10 s; last events {:?}",
                        out.iter().rev().take(3).collect::<Vec<_>>()
                    )
                })
                .expect("event");
            let done = pred(&e);
            out.push(e);
            if done {
                return out;
            }
        }
        panic!("condition not met within 1,000,000 events");
    }

    /// Reads until no event arrives for `quiet` (at most 20 s); returns
    /// the newest metrics per channel.
    pub async fn settle(&mut self, quiet: Duration) -> HashMap<String, [u32; 9]> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut latest = HashMap::new();
        while Instant::now() < deadline {
            match self.next_within(quiet).await {
                None => return latest,
                Some(e) => {
                    let e = e.expect("event");
                    latest.insert(e.channel.clone(), m(&e));
                }
            }
        }
        panic!("events kept coming for 20 s");
    }

    /// Asserts no event arrives within `within`.
    pub async fn quiet_for(&mut self, within: Duration) {
        if let Some(e) = self.next_within(within).await {
            panic!("unexpected event {e:?}");
        }
    }
}

pub fn m(e: &pb::OccupancyEvent) -> [u32; 9] {
    arr(e.metrics.as_ref().expect("metrics"))
}
