//! Demand for the change feed: how many subscriptions a replica holds, and
//! which feed shards stopped reading because it held none.
//!
//! Following the Redis event log costs Redis a blocked client, a reply and
//! a new command per shard per write, and costs the replica decoding every
//! change, whether or not anyone listens. A replica that only takes writes
//! or answers reads (most of a fleet behind a load balancer, most of the
//! time) should not pay that, so a shard reader pauses while the replica
//! has no subscription and restarts at the log's end when one arrives.
//!
//! Exactness: a subscription registers (the count goes up) before it reads
//! its snapshot, and first waits for [`Demand::ready`]. Every shard reader
//! is then either one that kept reading since before the registration, or
//! one that restarted at the log's end after it, so no change after the
//! snapshot is missed. The count and the pause marks change under one lock
//! ([`watch::Sender::send_if_modified`]), so a reader cannot pause on a
//! count that misses a registration the subscription already made.

use tokio::sync::watch;

#[derive(Debug, Default)]
struct State {
    listeners: usize,
    paused: Vec<bool>,
    paused_count: usize,
}

/// Shared between the event hub (listeners) and the feed (shard readers).
#[derive(Debug)]
pub struct Demand {
    state: watch::Sender<State>,
}

impl Demand {
    /// Demand for a feed of `shards` shards, with no listener.
    pub fn new(shards: u32) -> Self {
        Self {
            state: watch::Sender::new(State {
                paused: vec![false; shards as usize],
                ..State::default()
            }),
        }
    }

    /// A subscription starts listening.
    pub fn listen(&self) {
        self.state.send_modify(|s| s.listeners += 1);
    }

    /// A subscription stops listening.
    pub fn unlisten(&self) {
        self.state.send_if_modified(|s| {
            s.listeners = s.listeners.saturating_sub(1);
            // only a reader waiting for demand cares, and not about this
            false
        });
    }

    /// Subscriptions listening now.
    pub fn listeners(&self) -> usize {
        self.state.borrow().listeners
    }

    /// Shards whose reader is paused now (for tests and gauges).
    pub fn paused(&self) -> usize {
        self.state.borrow().paused_count
    }

    /// Waits until no shard reader is paused: from then on, every change
    /// after this moment reaches the hub.
    pub async fn ready(&self) {
        let mut rx = self.state.subscribe();
        // the sender lives as long as `self`, so this cannot fail
        let _ = rx.wait_for(|s| s.paused_count == 0).await;
    }

    /// Feed side: marks `shard` paused if nobody listens; returns whether
    /// it did (the reader must then wait for [`Demand::wanted`] and
    /// restart at the log's end, then call [`Demand::resume`]).
    pub fn pause(&self, shard: u32) -> bool {
        self.state.send_if_modified(|s| {
            let i = shard as usize;
            if s.listeners > 0 || i >= s.paused.len() || s.paused[i] {
                return false;
            }
            s.paused[i] = true;
            s.paused_count += 1;
            true
        })
    }

    /// Feed side: waits until someone listens.
    pub async fn wanted(&self) {
        let mut rx = self.state.subscribe();
        let _ = rx.wait_for(|s| s.listeners > 0).await;
    }

    /// Feed side: `shard`'s reader reads again (or gave up on restarting
    /// cleanly and will ask for a resync), so listeners may go on.
    pub fn resume(&self, shard: u32) {
        self.state.send_if_modified(|s| {
            let i = shard as usize;
            if i >= s.paused.len() || !s.paused[i] {
                return false;
            }
            s.paused[i] = false;
            s.paused_count -= 1;
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SOON: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn a_shard_pauses_only_while_nobody_listens() {
        let d = Demand::new(2);
        d.listen();
        assert!(!d.pause(0), "a listener keeps the reader going");
        d.unlisten();
        assert!(d.pause(0));
        assert!(!d.pause(0), "already paused");
        assert_eq!(d.paused(), 1);
        assert!(d.pause(1));
        assert_eq!(d.paused(), 2);
    }

    #[tokio::test]
    async fn a_listener_wakes_the_feed_and_waits_for_every_shard() {
        let d = std::sync::Arc::new(Demand::new(2));
        assert!(d.pause(0) && d.pause(1));
        assert!(tokio::time::timeout(SOON, d.wanted()).await.is_err(), "no demand yet");
        d.listen();
        tokio::time::timeout(SOON, d.wanted()).await.expect("demand seen");
        assert!(
            tokio::time::timeout(SOON, d.ready()).await.is_err(),
            "both shards paused"
        );
        d.resume(0);
        assert!(
            tokio::time::timeout(SOON, d.ready()).await.is_err(),
            "shard 1 still paused"
        );
        let waiter = tokio::spawn({
            let d = d.clone();
            async move { d.ready().await }
        });
        d.resume(1);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("ready once every shard reads")
            .expect("waiter ran");
        assert_eq!(d.paused(), 0);
        d.resume(1);
        assert_eq!(d.paused(), 0, "resuming twice counts once");
    }

    #[tokio::test]
    async fn unlisten_never_goes_below_zero() {
        let d = Demand::new(1);
        d.unlisten();
        assert_eq!(d.listeners(), 0);
        d.listen();
        assert_eq!(d.listeners(), 1);
    }
}
