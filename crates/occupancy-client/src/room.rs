//! Room occupancy in Ably Chat's shape: `get`, `subscribe`/`unsubscribe`,
//! `current`, and a `Stream` form.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::proto::occupancy_service_client::OccupancyServiceClient;
use crate::proto::{self, GetOccupancyRequest, SubscribeOccupancyRequest};
use crate::{transient, Client, Error, Followed};

/// A channel, seen as a chat room.
#[derive(Debug, Clone)]
pub struct Room {
    name: String,
    occupancy: RoomOccupancy,
}

impl Room {
    pub(crate) fn new(client: Client, name: String) -> Self {
        Self {
            occupancy: RoomOccupancy {
                client,
                channel: name.clone(),
                latest: Arc::new(watch::channel(None).0),
            },
            name,
        }
    }

    /// The room's channel name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The room's occupancy. Clones share [`RoomOccupancy::current`].
    pub fn occupancy(&self) -> RoomOccupancy {
        self.occupancy.clone()
    }
}

/// A room's occupancy at one moment: Ably Chat's `{connections,
/// presenceMembers}` plus the full metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct OccupancyData {
    /// Connections attached to the room.
    pub connections: u32,
    /// Presence members in the room.
    pub presence_members: u32,
    /// Every metric.
    pub metrics: proto::Metrics,
    /// When the service committed this state (ms since the Unix epoch;
    /// 0 for a value read with `get`).
    pub timestamp_ms: i64,
    /// The event's id (empty for a value read with `get`).
    pub event_id: String,
}

impl OccupancyData {
    fn from_metrics(metrics: proto::Metrics, timestamp_ms: i64, event_id: String) -> Self {
        Self {
            connections: metrics.connections,
            presence_members: metrics.presence_members,
            metrics,
            timestamp_ms,
            event_id,
        }
    }
}

/// The part of an event id that orders events of one channel.
fn order_key(id: &str) -> &str {
    id.get(..32).unwrap_or(id)
}

/// Whether `id` comes after `last` for the same channel.
fn newer(id: &str, last: Option<&str>) -> bool {
    last.is_none_or(|l| order_key(id) > order_key(l))
}

/// A room's occupancy: one-off reads, subscriptions, and the latest value
/// received.
#[derive(Clone)]
pub struct RoomOccupancy {
    client: Client,
    channel: String,
    latest: Arc<watch::Sender<Option<OccupancyData>>>,
}

impl std::fmt::Debug for RoomOccupancy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomOccupancy").field("channel", &self.channel).finish()
    }
}

/// An active subscription; [`Subscription::unsubscribe`] or dropping it
/// ends it: once either has returned, the listener is not called again
/// (a call already under way on another thread finishes).
#[derive(Debug)]
pub struct Subscription {
    token: CancellationToken,
}

impl Subscription {
    /// Ends the subscription: the listener is not called again.
    pub fn unsubscribe(self) {
        self.token.cancel();
    }

    /// Whether it is still running (false after `unsubscribe`, or when the
    /// service refused the subscription for good).
    pub fn is_active(&self) -> bool {
        !self.token.is_cancelled()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// The room's occupancy as an async stream of values. It yields the latest
/// state each time it is polled after a change (values in between may be
/// skipped, never the last one), and ends the subscription when dropped.
pub struct OccupancyStream {
    inner: Pin<Box<dyn Stream<Item = OccupancyData> + Send>>,
    _guard: DropGuard,
}

impl Stream for OccupancyStream {
    type Item = OccupancyData;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl RoomOccupancy {
    /// The room's channel name.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Reads the occupancy once (one request, retried on another endpoint
    /// when one fails).
    ///
    /// # Errors
    /// The service's error (INVALID_ARGUMENT for a bad channel name) or
    /// UNAVAILABLE when no endpoint answered.
    pub async fn get(&self) -> Result<OccupancyData, Error> {
        let channel = self.channel.clone();
        let details = self
            .client
            .call(|ch| {
                let channel = channel.clone();
                async move {
                    Ok(OccupancyServiceClient::new(ch)
                        .get_occupancy(GetOccupancyRequest { channel })
                        .await?
                        .into_inner())
                }
            })
            .await?;
        let metrics = details
            .channel
            .and_then(|c| c.status)
            .and_then(|s| s.occupancy)
            .and_then(|o| o.metrics)
            .unwrap_or_default();
        Ok(OccupancyData::from_metrics(metrics, 0, String::new()))
    }

    /// The latest value received by this room's subscriptions and streams;
    /// `None` before the first event. No network call.
    pub fn current(&self) -> Option<OccupancyData> {
        self.latest.borrow().clone()
    }

    /// Calls `listener` with the room's occupancy now and after every
    /// change, until the returned [`Subscription`] is unsubscribed or
    /// dropped. Survives replicas going away: it reconnects (with backoff)
    /// to the next endpoint and resumes where it was, and never reports a
    /// value older than one already reported.
    pub fn subscribe<F>(&self, listener: F) -> Subscription
    where
        F: Fn(OccupancyData) + Send + Sync + 'static,
    {
        let token = CancellationToken::new();
        self.follow(token.clone(), Box::new(listener));
        Subscription { token }
    }

    /// The same as [`subscribe`](Self::subscribe), as a stream.
    pub fn stream(&self) -> OccupancyStream {
        let token = CancellationToken::new();
        let (tx, rx) = watch::channel(None);
        self.follow(
            token.clone(),
            Box::new(move |o| {
                let _ = tx.send(Some(o));
            }),
        );
        OccupancyStream {
            inner: Box::pin(WatchStream::from_changes(rx).filter_map(|v| async move { v })),
            _guard: token.drop_guard(),
        }
    }

    fn follow(&self, token: CancellationToken, listener: Box<dyn Fn(OccupancyData) + Send + Sync>) {
        let channel = self.channel.clone();
        let latest = self.latest.clone();
        let mut follow = self.client.follow(SubscribeOccupancyRequest {
            channels: vec![channel.clone()],
            ..Default::default()
        });
        tokio::spawn(async move {
            let mut last_id: Option<String> = None;
            loop {
                let item = tokio::select! {
                    () = token.cancelled() => return,
                    item = follow.next() => item,
                };
                match item {
                    Some(Followed::Event(e)) => {
                        if !newer(&e.id, last_id.as_deref()) {
                            continue;
                        }
                        last_id = Some(e.id.clone());
                        let data = OccupancyData::from_metrics(e.metrics.unwrap_or_default(), e.timestamp_ms, e.id);
                        latest.send_if_modified(|cur| {
                            let fresher = newer(&data.event_id, cur.as_ref().map(|c| c.event_id.as_str()));
                            if fresher {
                                *cur = Some(data.clone());
                            }
                            fresher
                        });
                        if token.is_cancelled() {
                            return;
                        }
                        listener(data);
                    }
                    Some(Followed::ResumeRefused(e)) => {
                        // the follow subscribes afresh; values older than
                        // the last one reported are still skipped
                        tracing::warn!(channel, cause = %e, "resume refused, subscribing afresh");
                    }
                    Some(Followed::Failed(Error::Status(s))) if !transient(&s) => {
                        tracing::error!(channel, code = ?s.code(), cause = %s.message(), "subscription refused");
                        token.cancel();
                        return;
                    }
                    // the follow reconnects elsewhere, with a backoff
                    Some(Followed::Failed(_) | Followed::Live) => {}
                    None => return,
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_by_their_position_prefix() {
        let a = format!("{:016x}{:016x}.xyz", 5u64, 1u64);
        let b = format!("{:016x}{:016x}.abc", 5u64, 2u64);
        assert!(newer(&a, None));
        assert!(newer(&b, Some(&a)));
        assert!(!newer(&a, Some(&b)));
        assert!(!newer(&a, Some(&a)));
    }
}
