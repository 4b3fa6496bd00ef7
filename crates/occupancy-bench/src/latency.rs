//! The latency scenarios: a change sent on replica A to its event at each
//! subscriber on replica B. The changes and the timing are shared; the
//! subscribers are gRPC streams here (`latency`) or server-sent event
//! streams (`sse.rs`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::{Stream, StreamExt};
use occupancy::proto::v1 as pb;
use pb::connection_service_client::ConnectionServiceClient;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::load::{conns, ms, percentile, Credential};
use crate::streams::{open_streams, subscribe};
use crate::writes::close;

/// The changes a latency scenario makes on replica A.
#[derive(clap::Args, Clone)]
pub(crate) struct Changes {
    /// Replica A (writes).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    a: String,
    /// Subscribers on B; subscriber `i` follows channel `i % channels`.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Channels the subscribers are spread over; changes go round-robin
    /// over them.
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Changes to measure.
    #[arg(long, default_value_t = 500)]
    changes: usize,
    /// Changes per second (Attach calls started on schedule).
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Attach calls in flight at most.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
}

/// What one subscriber received: the index of the channel it follows and,
/// for each event of that channel, the connection count it carried and
/// when it arrived (since [`Run::start`]).
pub(crate) type Received = (usize, Vec<(u32, Duration)>);

/// One run of a latency scenario: its channels, writer session and clock.
///
/// Change `j` attaches a new connection to channel `j % channels`
/// (round-robin), issued on a fixed schedule of `rate` per second (open
/// loop: a call is started when it is due, whatever earlier calls are
/// doing, with at most `in_flight` outstanding). Each Attach answers the
/// channel's connection count after that change, which identifies the
/// change exactly, also when calls on one channel overlap. A sample is,
/// for every subscriber of the channel, the time from the moment that
/// Attach was sent on A to the moment the subscriber received the event
/// carrying that count: what a user of the service sees. Beside it, the
/// time from the moment the Attach returned (0 if the event came first;
/// counted as `early`), as this scenario measured before. A count no event
/// carried is `missing`: lost, or merged, when two Attach calls on one
/// channel left A in the same group commit call and so share one event
/// with the final count. Deliveries per second are
/// `rate × subscribers / channels`.
pub(crate) struct Run {
    changes: Changes,
    names: Vec<String>,
    session: String,
    start: Instant,
}

/// One change as the writer saw it.
struct Write {
    channel: usize,
    count: u32,
    sent: Duration,
    returned: Duration,
}

impl Run {
    /// A run whose channel names start with `prefix` and this process's id.
    pub(crate) fn new(prefix: &str, mut changes: Changes) -> Self {
        changes.channels = changes.channels.clamp(1, changes.subscribers.max(1));
        let session = format!("{prefix}-{}", std::process::id());
        let names = (0..changes.channels).map(|c| format!("{session}:room{c}")).collect();
        Self {
            changes,
            names,
            session,
            start: Instant::now(),
        }
    }

    /// The channels, subscriber `i` following `names()[i % len]`.
    pub(crate) fn names(&self) -> &[String] {
        &self.names
    }

    /// Subscribers to open.
    pub(crate) fn subscribers(&self) -> usize {
        self.changes.subscribers
    }

    /// The connection count channel `c` reaches once every change is in.
    fn expected(&self, c: usize) -> u32 {
        let n = self.changes.channels;
        ((self.changes.changes + n - 1 - c) / n) as u32
    }

    /// Spawns the reader of subscriber `i`: it records each count `events`
    /// yields (`None` for a message that is not an event of its channel)
    /// until the channel's last count, the end of `events`, or `stop`.
    pub(crate) fn reader<S>(&self, i: usize, mut events: S, stop: CancellationToken) -> JoinHandle<Received>
    where
        S: Stream<Item = Option<u32>> + Send + Unpin + 'static,
    {
        let c = i % self.names.len();
        let want = self.expected(c);
        let start = self.start;
        tokio::spawn(async move {
            let mut got: Vec<(u32, Duration)> = Vec::with_capacity(want as usize);
            while got.last().is_none_or(|(n, _)| *n < want) {
                let m = tokio::select! {
                    () = stop.cancelled() => break,
                    m = events.next() => m,
                };
                let at = start.elapsed();
                match m {
                    None => break,
                    Some(Some(n)) => got.push((n, at)),
                    Some(None) => {}
                }
            }
            (c, got)
        })
    }

    /// Makes the changes on schedule, waits for the readers (at most 10 s
    /// after the last change returned, then `stop` fires), closes the
    /// writer session and prints the `RESULT` line of `scenario`.
    pub(crate) async fn measure(
        self,
        scenario: &str,
        readers: Vec<JoinHandle<Received>>,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let ch = &self.changes;
        let wconns = conns(&ch.a, &Credential::default(), ch.in_flight).await?;
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(ch.in_flight.max(1)));
        let mut calls = tokio::task::JoinSet::new();
        let mut writes = Vec::with_capacity(ch.changes);
        let write_start = Instant::now();
        let period = 1.0 / f64::from(ch.rate.max(1));
        for j in 0..ch.changes {
            let due = write_start + Duration::from_secs_f64(period * j as f64);
            tokio::time::sleep_until(due.into()).await;
            let permit = permits.clone().acquire_owned().await?;
            let c = j % self.names.len();
            let mut writer = ConnectionServiceClient::new(wconns[j % wconns.len()].clone());
            let req = pb::AttachRequest {
                session_id: self.session.clone(),
                connection_id: format!("c{j}"),
                channel: self.names[c].clone(),
                modes: vec![pb::Mode::Subscribe as i32],
            };
            let start = self.start;
            calls.spawn(async move {
                let sent = start.elapsed();
                let r = writer.attach(req).await;
                let returned = start.elapsed();
                drop(permit);
                let count = r?.into_inner().metrics.map_or(0, |m| m.connections);
                Ok::<_, anyhow::Error>(Write {
                    channel: c,
                    count,
                    sent,
                    returned,
                })
            });
            // reap finished calls as we go, to surface errors early
            while let Some(r) = calls.try_join_next() {
                writes.push(r??);
            }
        }
        while let Some(r) = calls.join_next().await {
            writes.push(r??);
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
            results.push(r.await.context("a subscriber's reader failed")?);
        }
        stopper.abort();
        close(&ch.a, &self.session).await?;
        let by_count: HashMap<(usize, u32), &Write> = writes.iter().map(|w| ((w.channel, w.count), w)).collect();
        let mut from_send = Vec::with_capacity(ch.subscribers * ch.changes / self.names.len() + 1);
        let mut from_reply = Vec::with_capacity(from_send.capacity());
        let (mut missing, mut early) = (0usize, 0usize);
        for (c, got) in results {
            let mut seen = 0usize;
            for (n, at) in got {
                if let Some(w) = by_count.get(&(c, n)) {
                    seen += 1;
                    if at < w.returned {
                        early += 1;
                    }
                    from_send.push(ms(at.saturating_sub(w.sent)));
                    from_reply.push(ms(at.saturating_sub(w.returned)));
                }
            }
            missing += (self.expected(c) as usize).saturating_sub(seen);
        }
        if from_send.is_empty() {
            bail!("no events received");
        }
        from_send.sort_by(f64::total_cmp);
        from_reply.sort_by(f64::total_cmp);
        let q = |s: &[f64]| (percentile(s, 0.50), percentile(s, 0.99), s[s.len() - 1]);
        let ((p50, p99, max), (r50, r99, rmax)) = (q(&from_send), q(&from_reply));
        let rate = ch.changes as f64 / write_secs;
        println!(
            "RESULT scenario={scenario} subscribers={} channels={} changes={} change_rate={} achieved_rate={rate:.0} deliveries_per_s={:.0} in_flight={} samples={} missing={missing} early={early} p50_ms={p50:.2} p99_ms={p99:.2} max_ms={max:.2} reply_p50_ms={r50:.2} reply_p99_ms={r99:.2} reply_max_ms={rmax:.2}",
            ch.subscribers,
            self.names.len(),
            ch.changes,
            ch.rate,
            rate * ch.subscribers as f64 / self.names.len() as f64,
            ch.in_flight,
            from_send.len(),
        );
        Ok(())
    }
}

/// The gRPC latency scenario: `changes.subscribers` SubscribeOccupancy
/// streams on replica `b`.
pub(crate) async fn latency(changes: Changes, b: String) -> anyhow::Result<()> {
    let run = Run::new("lat", changes);
    let streams = open_streams(&b, run.names(), run.subscribers(), subscribe).await?;
    let stop = CancellationToken::new();
    let readers = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let name = run.names()[i % run.names().len()].clone();
            let events = futures::stream::unfold(s, |mut s| async move {
                let m = s.message().await.ok()??;
                Some((m, s))
            })
            .map(move |m| match m.into_event() {
                Ok(Some(e)) if e.channel == name => e.metrics.map(|m| m.connections),
                _ => None,
            });
            run.reader(i, Box::pin(events), stop.clone())
        })
        .collect();
    run.measure("latency", readers, stop).await
}
