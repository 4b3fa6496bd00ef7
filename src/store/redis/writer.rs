//! Group commit of writes: concurrent `Apply` calls (a unary Attach is an
//! Apply of one operation) are merged into one script call.
//!
//! Each script call has a fixed cost in Redis (the call itself, opening
//! the lease, writing back counters, indexes and event entries: about
//! 250,000 instructions, against 50,000 to 90,000 per operation), so one call per unary write cannot come near what Redis
//! can do. A single task per store takes every write waiting, up to
//! [`MAX_GROUP_OPS`] operations, and sends them as one call; at most
//! [`IN_FLIGHT`] calls are outstanding, so under load writes queue while
//! calls are in flight and leave together, and with no load a write leaves
//! at once (no timer, no added latency).
//!
//! Each write stays a group of its own inside the call (its session, lease
//! and sequence are handled as before, in arrival order); the whole call is
//! atomic, which is stronger than each write being atomic. A write is
//! carried out once queued even if its caller goes away meanwhile, as a
//! script already sent would be; writes are idempotent, or sequenced where
//! a front end needs them applied once.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::domain::{OpResult, Operation, SessionId};
use crate::error::{Error, Result};

/// Script calls outstanding at once.
pub(super) const IN_FLIGHT: usize = 4;
/// Operations merged into one call at most (a larger write goes alone).
pub(super) const MAX_GROUP_OPS: usize = 10_000;

/// One write waiting to be sent.
pub(super) struct Job {
    pub session: SessionId,
    pub sequence: u64,
    pub ops: Vec<Operation>,
    pub include_metrics: bool,
    pub reply: oneshot::Sender<Result<Option<Vec<OpResult>>>>,
}

/// Runs the writes of `jobs` (in order) as one call, answering each.
pub(super) trait Sender: Send + Sync + 'static {
    /// Sends the jobs as one script call; one answer per job, in order.
    fn send(&self, jobs: &[Job]) -> impl std::future::Future<Output = Result<Vec<Option<Vec<OpResult>>>>> + Send;
}

/// Starts the group commit task; it ends when every sender of the returned
/// queue is dropped.
pub(super) fn start<S: Sender>(sender: S) -> mpsc::UnboundedSender<Job> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(Arc::new(sender), rx));
    tx
}

async fn run<S: Sender>(sender: Arc<S>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut next: Option<Job> = None;
    loop {
        let first = match next.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut ops = first.ops.len();
        let mut jobs = vec![first];
        while let Ok(j) = rx.try_recv() {
            if ops + j.ops.len() > MAX_GROUP_OPS {
                next = Some(j);
                break;
            }
            ops += j.ops.len();
            jobs.push(j);
        }
        let sender = sender.clone();
        tokio::spawn(async move {
            let answers = sender.send(&jobs).await;
            drop(permit);
            match answers {
                Ok(answers) if answers.len() == jobs.len() => {
                    for (job, answer) in jobs.into_iter().zip(answers) {
                        // the caller may have given up (cancelled call)
                        let _unwanted = job.reply.send(Ok(answer));
                    }
                }
                Ok(answers) => {
                    let e = Error::Internal(format!(
                        "apply script answered {} groups for {} writes",
                        answers.len(),
                        jobs.len()
                    ));
                    for job in jobs {
                        let _unwanted = job.reply.send(Err(e.clone()));
                    }
                }
                Err(e) => {
                    for job in jobs {
                        let _unwanted = job.reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::domain::{ChannelName, ConnectionId, ModeSet, OpStatus};

    /// Answers each job with as many results as it has operations, the
    /// first result's status telling the job's size parity, and records
    /// the size of every call.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<usize>>,
    }

    impl Sender for Arc<Fake> {
        async fn send(&self, jobs: &[Job]) -> Result<Vec<Option<Vec<OpResult>>>> {
            self.calls.lock().unwrap().push(jobs.len());
            Ok(jobs
                .iter()
                .map(|j| {
                    Some(vec![
                        OpResult {
                            status: if j.ops.len() % 2 == 0 {
                                OpStatus::Ok
                            } else {
                                OpStatus::NotPresenceAttached
                            },
                            metrics: None,
                        };
                        j.ops.len()
                    ])
                })
                .collect())
        }
    }

    pub(in crate::store::redis) fn job(n: usize) -> (Job, oneshot::Receiver<Result<Option<Vec<OpResult>>>>) {
        let op = Operation::Attach {
            connection: ConnectionId::parse("c", "c1").unwrap(),
            channel: ChannelName::parse("ch", "x").unwrap(),
            modes: ModeSet::default(),
        };
        let (reply, rx) = oneshot::channel();
        let job = Job {
            session: SessionId::parse("s", "fe").unwrap(),
            sequence: 0,
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
            let got = rx.await.unwrap().unwrap().unwrap();
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
            rx.await.unwrap().unwrap().unwrap();
        }
        let mut calls = fake.calls.lock().unwrap().clone();
        calls.sort_unstable();
        assert_eq!(calls, [1, 2], "6,000 alone, then 6,000 + 10");
    }
}
