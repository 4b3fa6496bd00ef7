//! Following a subscription across replicas: the reconnect-and-resume
//! loop under [`RoomOccupancy::subscribe`](crate::RoomOccupancy::subscribe)
//! and the `occupancy watch` command.
//!
//! A [`Follow`] opens `SubscribeOccupancy` on the client's current
//! endpoint and yields its events. When the stream fails or ends, it says
//! so ([`Followed::Failed`]) and, polled again, moves to the next endpoint
//! after a backoff and subscribes again with `resume_from` set to the last
//! event's id, so nothing is missed. What to do about a failure (retry
//! forever, give up after a few, stop on a refusal) is the caller's
//! choice: it stops polling.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tonic::{Code, Status, Streaming};

use crate::proto::occupancy_service_client::OccupancyServiceClient;
use crate::proto::{OccupancyEvent, SubscribeOccupancyRequest, SubscribeOccupancyResponse};
use crate::{Client, Error};

/// What a [`Follow`] yields.
#[derive(Debug)]
pub enum Followed {
    /// An event: of the snapshot, of a replay after a resume, or live.
    Event(OccupancyEvent),
    /// The snapshot (or the replay after a resume) is complete: the events
    /// from here on are live.
    Live,
    /// The subscription could not be opened (or not within the client's
    /// request timeout), or its stream failed. Polled again, the follow
    /// moves to the next endpoint after a backoff and resumes.
    Failed(Error),
    /// The service no longer takes the resume point (INVALID_ARGUMENT while
    /// resuming). Polled again, the follow subscribes afresh, which starts
    /// with a full snapshot.
    ResumeRefused(Error),
}

/// A subscription followed across replicas (reconnecting and resuming);
/// made by [`Client::follow`]. Cancel-safe: a `next()` dropped half-way
/// loses nothing.
pub struct Follow {
    inner: Pin<Box<dyn Stream<Item = Followed> + Send>>,
}

impl std::fmt::Debug for Follow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follow").finish_non_exhaustive()
    }
}

impl Stream for Follow {
    type Item = Followed;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Followed>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl Client {
    /// Follows the subscription `request` (its `resume_from` is where to
    /// start; the follow keeps it up to date) on this client's endpoints.
    /// The stream never ends by itself: drop it to unsubscribe.
    pub fn follow(&self, request: SubscribeOccupancyRequest) -> Follow {
        let state = State {
            client: self.clone(),
            request,
            stream: None,
            failed: None,
            attempt: 0,
        };
        Follow {
            inner: Box::pin(futures::stream::unfold(state, |mut s| async move {
                let item = s.next().await;
                Some((item, s))
            })),
        }
    }
}

struct State {
    client: Client,
    request: SubscribeOccupancyRequest,
    /// The open stream and the endpoint it is on.
    stream: Option<(usize, Streaming<SubscribeOccupancyResponse>)>,
    /// The endpoint that just failed: move on from it, after a backoff,
    /// before subscribing again.
    failed: Option<usize>,
    /// Failures since the last message, for the backoff.
    attempt: u32,
}

impl State {
    async fn next(&mut self) -> Followed {
        loop {
            if let Some(endpoint) = self.failed.take() {
                self.client.fail_over(endpoint);
                let wait = self.client.backoff(self.attempt);
                self.attempt = self.attempt.saturating_add(1);
                tokio::time::sleep(wait).await;
            }
            let Some((endpoint, stream)) = self.stream.as_mut() else {
                let (endpoint, channel) = self.client.channel();
                let mut service = OccupancyServiceClient::new(channel);
                let open = service.subscribe_occupancy(self.request.clone());
                match tokio::time::timeout(self.client.request_timeout(), open).await {
                    Ok(Ok(response)) => self.stream = Some((endpoint, response.into_inner())),
                    Ok(Err(status)) => return self.failure(endpoint, status),
                    Err(_) => {
                        return self.failure(
                            endpoint,
                            Status::deadline_exceeded("no answer within the request timeout"),
                        )
                    }
                }
                continue;
            };
            let endpoint = *endpoint;
            match stream.message().await {
                Ok(Some(response)) => {
                    self.attempt = 0;
                    if response.live.is_some() {
                        return Followed::Live;
                    }
                    // a heartbeat carries nothing
                    let Some(event) = response.event else { continue };
                    self.request.resume_from.clone_from(&event.id);
                    return Followed::Event(event);
                }
                // the replica ended the stream without a status: go on
                // elsewhere
                Ok(None) => {
                    self.stream = None;
                    self.failed = Some(endpoint);
                }
                Err(status) => return self.failure(endpoint, status),
            }
        }
    }

    fn failure(&mut self, endpoint: usize, status: Status) -> Followed {
        self.stream = None;
        if status.code() == Code::InvalidArgument && !self.request.resume_from.is_empty() {
            // start over at once, with a snapshot
            self.request.resume_from.clear();
            return Followed::ResumeRefused(status.into());
        }
        self.failed = Some(endpoint);
        Followed::Failed(status.into())
    }
}
