//! Group commit of writes: concurrent `Apply` calls (a unary Attach is an
//! Apply of one operation) are merged into one script call.
//!
//! Each script call has a fixed cost in Redis (the call itself, opening
//! the lease, writing back counters, indexes and event entries: more than
//! the work of a few operations), so one call per unary write cannot come
//! near what Redis can do. A single task
//! per store (`group.rs`; per node for a partitioned store, `nodes.rs`)
//! takes every write waiting, up to
//! [`MAX_GROUP_OPS`] operations, and sends them as one call. With no call in flight a write leaves at
//! once (no timer, no added latency). While calls are in flight, writes
//! queue, and another call leaves only once [`MIN_GROUP_OPS`] operations
//! wait (at most [`IN_FLIGHT`] calls outstanding): a batch of that size
//! pays for its call, and large batches keep Redis busy while the previous
//! call's answer travels back, where single writes are better merged into
//! the next call. Measured against leaving whenever a call slot is free,
//! this raised the throughput of many concurrent unary writes (most calls
//! had carried one write) and left Apply batches unchanged (see
//! BENCHMARKS.md).
//!
//! Each write stays a group of its own inside the call (its session, lease
//! and sequence are handled as before, in arrival order); the whole call is
//! atomic, which is stronger than each write being atomic. A write is
//! carried out once queued even if its caller goes away meanwhile, as a
//! script already sent would be; writes are idempotent, or sequenced where
//! a front end needs them applied once.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::group::{self, Policy};

use crate::domain::{Applied, Operation, SessionId};
use crate::error::Result;

/// Script calls outstanding at once.
pub(super) const IN_FLIGHT: usize = crate::config::defaults::REDIS_WRITES_IN_FLIGHT;
/// Operations merged into one call at most (a larger write goes alone).
pub(super) const MAX_GROUP_OPS: usize = crate::config::defaults::REDIS_MAX_GROUP_OPS;
/// While a call is in flight, another leaves only once this many operations
/// wait (a write this large leaves at once).
pub(super) const MIN_GROUP_OPS: usize = crate::config::defaults::REDIS_MIN_GROUP_OPS;

/// One write waiting to be sent.
pub(super) struct Job {
    pub session: SessionId,
    pub sequence: u64,
    pub epoch: u64,
    /// The token a lease this write opens takes; 0: a new random one.
    pub open_epoch: u64,
    /// Who writes ("" with access control off).
    pub owner: String,
    pub ops: Vec<Operation>,
    pub include_metrics: bool,
    pub reply: oneshot::Sender<Result<Applied>>,
}

/// Runs the writes of `jobs` (in order) as one call, answering each.
pub(super) trait Sender: Send + Sync + 'static {
    /// Sends the jobs as one script call; one answer per job, in order.
    fn send(&self, jobs: &[Job]) -> impl std::future::Future<Output = Result<Vec<Applied>>> + Send;
}

/// Starts the group commit task of a store holding the whole state (a
/// partitioned store's writes go through `nodes.rs`); it ends when every
/// sender of the returned queue is dropped.
pub(super) fn start<S: Sender>(sender: S) -> mpsc::UnboundedSender<Job> {
    let sender = Arc::new(sender);
    let policy = Policy {
        in_flight: IN_FLIGHT,
        min_size: MIN_GROUP_OPS,
        max_size: MAX_GROUP_OPS,
    };
    group::start(
        policy,
        None,
        |j: &Job| j.ops.len(),
        move |jobs: Vec<Job>| {
            let sender = sender.clone();
            async move {
                let answers = sender.send(&jobs).await;
                group::answer(jobs.into_iter().map(|j| j.reply).collect(), answers, "apply function");
            }
        },
    )
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Mutex;

    use tokio::sync::Semaphore;

    use super::*;
    use crate::domain::{ChannelName, ConnectionId, ModeSet, OpResult, OpStatus};

    /// Answers each job with as many results as it has operations, the
    /// first result's status telling the job's size parity, and records
    /// the size of every call.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<usize>>,
    }

    impl Sender for Arc<Fake> {
        async fn send(&self, jobs: &[Job]) -> Result<Vec<Applied>> {
            self.calls.lock().unwrap().push(jobs.len());
            Ok(jobs
                .iter()
                .map(|j| Applied::Done {
                    results: vec![
                        OpResult {
                            status: if j.ops.len() % 2 == 0 {
                                OpStatus::Ok
                            } else {
                                OpStatus::NotPresenceAttached
                            },
                            metrics: None,
                        };
                        j.ops.len()
                    ],
                    epoch: 1,
                })
                .collect())
        }
    }

    pub(in crate::store::redis) fn job(n: usize) -> (Job, oneshot::Receiver<Result<Applied>>) {
        let op = Operation::Attach {
            connection: ConnectionId::parse("c", "c1").unwrap(),
            channel: ChannelName::parse("ch", "x").unwrap(),
            modes: ModeSet::default(),
        };
        let (reply, rx) = oneshot::channel();
        let job = Job {
            session: SessionId::parse("s", "fe").unwrap(),
            sequence: 0,
            epoch: 0,
            open_epoch: 0,
            owner: String::new(),
            ops: vec![op; n],
            include_metrics: false,
            reply,
        };
        (job, rx)
    }

    #[tokio::test]
    async fn waiting_writes_leave_as_one_call_and_each_gets_its_own_answer() {
        let fake = Arc::new(Fake::default());
        let tx = start(fake.clone());
        let mut answers = Vec::new();
        for n in 1..=40 {
            let (j, rx) = job(n);
            tx.send(j).map_err(|_| "queue closed").unwrap();
            answers.push((n, rx));
        }
        for (n, rx) in answers {
            let Applied::Done { results: got, .. } = rx.await.unwrap().unwrap() else {
                panic!("not applied")
            };
            assert_eq!(got.len(), n);
            let want = if n % 2 == 0 {
                OpStatus::Ok
            } else {
                OpStatus::NotPresenceAttached
            };
            assert!(got.iter().all(|r| r.status == want));
        }
        assert_eq!(*fake.calls.lock().unwrap(), [40]);
    }

    /// Holds every call until released, and tells when one starts.
    struct Held {
        calls: Mutex<Vec<usize>>,
        started: mpsc::UnboundedSender<usize>,
        release: Semaphore,
    }

    /// A sender holding each call until released, and the sizes of the
    /// calls as they start.
    fn held() -> (Arc<Held>, mpsc::UnboundedReceiver<usize>) {
        let (started, rx) = mpsc::unbounded_channel();
        let held = Arc::new(Held {
            calls: Mutex::new(Vec::new()),
            started,
            release: Semaphore::new(0),
        });
        (held, rx)
    }

    impl Sender for Arc<Held> {
        async fn send(&self, jobs: &[Job]) -> Result<Vec<Applied>> {
            let ops = jobs.iter().map(|j| j.ops.len()).sum();
            self.calls.lock().unwrap().push(ops);
            let _ = self.started.send(ops);
            self.release.acquire().await.expect("open").forget();
            Ok(jobs
                .iter()
                .map(|j| Applied::Done {
                    results: vec![
                        OpResult {
                            status: OpStatus::Ok,
                            metrics: None
                        };
                        j.ops.len()
                    ],
                    epoch: 1,
                })
                .collect())
        }
    }

    /// Lets the writer task run until it waits (one runtime thread).
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn while_a_call_is_in_flight_small_writes_wait_and_large_ones_leave() {
        let (held, mut started) = held();
        let tx = start(held.clone());
        let send = |n: usize| {
            let (j, rx) = job(n);
            tx.send(j).map_err(|_| "queue closed").unwrap();
            rx
        };
        // nothing in flight: one write leaves at once
        let first = send(1);
        assert_eq!(started.recv().await, Some(1));
        // a call in flight: small writes wait, whatever their number of slots
        let small: Vec<_> = (0..MIN_GROUP_OPS - 1).map(|_| send(1)).collect();
        settle().await;
        assert_eq!(
            *held.calls.lock().unwrap(),
            [1],
            "small writes left with a call in flight"
        );
        // enough operations waiting: they leave in a second call
        let big = send(1);
        assert_eq!(started.recv().await, Some(MIN_GROUP_OPS));
        let large = send(MIN_GROUP_OPS);
        assert_eq!(
            started.recv().await,
            Some(MIN_GROUP_OPS),
            "a large write leaves at once"
        );
        let more = send(1);
        settle().await;
        assert_eq!(held.calls.lock().unwrap().len(), 3);
        // the first call ends: the write still waits for the two in flight
        held.release.add_permits(1);
        first.await.unwrap().unwrap();
        settle().await;
        assert_eq!(held.calls.lock().unwrap().len(), 3);
        // no call in flight: it leaves
        held.release.add_permits(2);
        assert_eq!(started.recv().await, Some(1));
        held.release.add_permits(1);
        for rx in small.into_iter().chain([big, large, more]) {
            rx.await.unwrap().unwrap();
        }
        assert_eq!(*held.calls.lock().unwrap(), [1, MIN_GROUP_OPS, MIN_GROUP_OPS, 1]);
    }

    #[tokio::test]
    async fn a_call_holds_at_most_max_group_ops() {
        let fake = Arc::new(Fake::default());
        let tx = start(fake.clone());
        let mut answers = Vec::new();
        for n in [6_000, 6_000, 10] {
            let (j, rx) = job(n);
            tx.send(j).map_err(|_| "queue closed").unwrap();
            answers.push(rx);
        }
        for rx in answers {
            rx.await.unwrap().unwrap();
        }
        let mut calls = fake.calls.lock().unwrap().clone();
        calls.sort_unstable();
        assert_eq!(calls, [1, 2], "6,000 alone, then 6,000 + 10");
    }
}
