//! Merging concurrent requests into few Redis calls, for writes
//! (`writer.rs`) and reads (`reads.rs`).
//!
//! One task per queue takes the requests waiting and hands them to `call`
//! as one group. With no call in flight a request leaves at once (no timer,
//! no added latency). While calls are in flight, requests queue, and
//! another call leaves only once [`Policy::min_size`] units (operations,
//! keys) wait, with at most [`Policy::in_flight`] calls outstanding; a call
//! carries at most [`Policy::max_size`] units (a larger request goes
//! alone). A request is carried out once queued, even if its caller goes
//! away meanwhile. On a Redis Cluster the write queues of a replica's
//! nodes (`nodes.rs`) also share a [`Budget`] of calls in flight.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, AcquireError, Notify, OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

/// When a group leaves.
#[derive(Debug, Clone, Copy)]
pub(super) struct Policy {
    /// Calls outstanding at once.
    pub in_flight: usize,
    /// Units that must wait before a call leaves while another is in flight.
    pub min_size: usize,
    /// Units in one call at most.
    pub max_size: usize,
}

/// The calls in flight each queue of a store split into `partitions` may
/// have: its share of `total`, at least one. A partitioned deployment has
/// one queue per partition, each seeing its partition's share of the load;
/// with the whole `total` each, a call would leave for almost every request
/// and Redis would pay a call's fixed cost (dispatch, lease, write-back,
/// event entry, WAIT) per request instead of per group. With a share, the
/// requests that arrive while a partition's call is out wait for the next
/// one, as they do on one Redis.
pub(super) fn share(total: usize, partitions: u32) -> usize {
    (total / partitions.max(1) as usize).max(1)
}

/// Calls in flight shared by several queues: each also takes one of
/// these for each call. The write queues of a cluster's nodes share one
/// (`nodes.rs`): the primaries answer in parallel, so with calls of their
/// own each, a call would carry fewer requests than on one Redis (its
/// fixed cost paid more often); with the budget, the requests of a queue
/// that waits for one pile up into its next call. Waiting queues are
/// served in the order they asked. A group of [`Policy::min_size`] units
/// leaves without the budget's call: it is worth a call of its own.
#[derive(Debug, Clone)]
pub(super) struct Budget(Arc<Semaphore>);

impl Budget {
    /// A budget of `calls` calls in flight.
    pub(super) fn new(calls: usize) -> Self {
        Self(Arc::new(Semaphore::new(calls.max(1))))
    }
}

/// Starts the queue's task: `size` tells a request's units, `call` carries
/// out one group (in queue order) and answers each of its requests; each
/// call also takes one of `budget`'s, when given. The task ends when every
/// sender of the returned queue is dropped.
pub(super) fn start<J, F, Fut>(
    policy: Policy,
    budget: Option<Budget>,
    size: fn(&J) -> usize,
    call: F,
) -> mpsc::UnboundedSender<J>
where
    J: Send + 'static,
    F: Fn(Vec<J>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(policy, budget, size, call, rx));
    tx
}

/// A request for one of a [`Budget`]'s calls, kept across the loop's turns
/// so the queue keeps its place among those waiting.
type Asking = Pin<Box<dyn Future<Output = std::result::Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// Answers each request of a group, in order, from its call's answers: one
/// answer each; when the call failed, or answered another number of them
/// (`call` names it in the error), its error for every request. A caller
/// that gave up meanwhile (cancelled call) is skipped.
pub(super) fn answer<A>(replies: Vec<oneshot::Sender<Result<A>>>, answers: Result<Vec<A>>, call: &str) {
    let answers = answers.and_then(|a| {
        if a.len() == replies.len() {
            Ok(a)
        } else {
            Err(Error::Internal(format!(
                "{call} answered {} results for {} requests",
                a.len(),
                replies.len()
            )))
        }
    });
    match answers {
        Ok(answers) => {
            for (reply, a) in replies.into_iter().zip(answers) {
                let _unwanted = reply.send(Ok(a));
            }
        }
        Err(e) => {
            for reply in replies {
                let _unwanted = reply.send(Err(e.clone()));
            }
        }
    }
}

/// A queue task's state between its turns.
struct Waiting<J> {
    queue: VecDeque<J>,
    /// Units in `queue`.
    queued: usize,
    /// Whether senders remain.
    open: bool,
    size: fn(&J) -> usize,
    /// The budget's call taken for the next call.
    pass: Option<OwnedSemaphorePermit>,
    /// The request for one of the budget's calls.
    asking: Option<Asking>,
}

impl<J> Waiting<J> {
    fn push(&mut self, j: J) {
        self.queued += (self.size)(&j);
        self.queue.push_back(j);
    }

    /// Waits for a call to end, a request, or the budget's call asked for.
    async fn wait(&mut self, ended: &Notify, rx: &mut mpsc::UnboundedReceiver<J>) {
        tokio::select! {
            () = ended.notified() => {}
            j = rx.recv(), if self.open => match j {
                Some(j) => self.push(j),
                None => self.open = false,
            },
            p = async { self.asking.as_mut().expect("guarded").await }, if self.asking.is_some() => {
                self.asking = None;
                // the budget's semaphore is never closed
                self.pass = p.ok();
            }
        }
    }
}

async fn run<J, F, Fut>(
    policy: Policy,
    budget: Option<Budget>,
    size: fn(&J) -> usize,
    call: F,
    mut rx: mpsc::UnboundedReceiver<J>,
) where
    J: Send + 'static,
    F: Fn(Vec<J>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(policy.in_flight));
    // a call ended: the loop may send what waits
    let ended = Arc::new(Notify::new());
    let mut w = Waiting {
        queue: VecDeque::new(),
        queued: 0,
        open: true,
        size,
        pass: None,
        asking: None,
    };
    loop {
        while let Ok(j) = rx.try_recv() {
            w.push(j);
        }
        let busy = policy.in_flight - slots.available_permits();
        if w.queue.is_empty() {
            if !w.open {
                return;
            }
        } else if busy == 0 || (busy < policy.in_flight && w.queued >= policy.min_size) {
            // [`Policy::min_size`] units are worth a call of their own: they
            // leave without waiting for the budget (taking a call of it
            // this queue holds)
            let small = w.queued < policy.min_size;
            if let (Some(Budget(shared)), true) = (&budget, small) {
                if w.pass.is_none() && w.asking.is_none() {
                    match shared.clone().try_acquire_owned() {
                        Ok(p) => w.pass = Some(p),
                        Err(_) => w.asking = Some(Box::pin(shared.clone().acquire_owned())),
                    }
                }
            }
            // only this task takes slots, and one is free; with a budget,
            // a small call also needs the budget's
            let permit = match slots.clone().try_acquire_owned() {
                Ok(permit) if budget.is_none() || !small || w.pass.is_some() => permit,
                _ => {
                    w.wait(&ended, &mut rx).await;
                    continue;
                }
            };
            let shared = w.pass.take();
            // what is left waits for a call of its own, asking anew if small
            w.asking = None;
            let mut units = 0;
            let mut group = Vec::new();
            while let Some(j) = w.queue.front() {
                let n = size(j);
                if !group.is_empty() && units + n > policy.max_size {
                    break;
                }
                units += n;
                group.extend(w.queue.pop_front());
            }
            w.queued -= units;
            let done = call(group);
            let ended = ended.clone();
            tokio::spawn(async move {
                done.await;
                drop(permit);
                drop(shared);
                ended.notify_one();
            });
            continue;
        }
        w.wait(&ended, &mut rx).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Queues whose calls report their start and wait to be ended.
    struct Calls {
        tx: mpsc::UnboundedSender<(char, usize)>,
        started: mpsc::UnboundedReceiver<(char, usize)>,
        release: Arc<Semaphore>,
    }

    impl Calls {
        fn new() -> Self {
            let (tx, started) = mpsc::unbounded_channel();
            Self {
                tx,
                started,
                release: Arc::new(Semaphore::new(0)),
            }
        }

        /// A queue of one call in flight, named `name`, whose groups of
        /// `min_size` units or more are worth a call of their own, drawing
        /// on `budget` when given: each call reports its name and its
        /// units, then lasts until [`Calls::end`] ends it.
        fn queue(&self, name: char, min_size: usize, budget: Option<&Budget>) -> mpsc::UnboundedSender<usize> {
            let policy = Policy {
                in_flight: 1,
                min_size,
                max_size: 1_000,
            };
            let (started, release) = (self.tx.clone(), self.release.clone());
            start(
                policy,
                budget.cloned(),
                |j: &usize| *j,
                move |group: Vec<usize>| {
                    started.send((name, group.iter().sum())).expect("test alive");
                    let release = release.clone();
                    async move { release.acquire().await.expect("open").forget() }
                },
            )
        }

        /// The next call started (name, units), failing the test when none
        /// starts within 10 s.
        async fn next(&mut self) -> (char, usize) {
            tokio::time::timeout(std::time::Duration::from_secs(10), self.started.recv())
                .await
                .expect("a call starts within 10 s")
                .expect("the queues are alive")
        }

        /// Whether no call started since the last one seen.
        fn none_started(&mut self) -> bool {
            self.started.try_recv().is_err()
        }

        /// Ends `n` calls in flight.
        fn end(&self, n: usize) {
            self.release.add_permits(n);
        }
    }

    /// Lets the queues' tasks run until they wait (one runtime thread).
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn partitions_sharing_a_budget_take_turns_and_pile_up_their_requests() {
        let budget = Budget::new(1);
        let mut calls = Calls::new();
        let a = calls.queue('a', 100, Some(&budget));
        let b = calls.queue('b', 100, Some(&budget));
        let c = calls.queue('c', 100, Some(&budget));
        a.send(1).unwrap();
        assert_eq!(calls.next().await, ('a', 1));
        // the budget's one call is out: b asks first, then c
        b.send(1).unwrap();
        settle().await;
        c.send(1).unwrap();
        settle().await;
        b.send(1).unwrap();
        b.send(1).unwrap();
        settle().await;
        assert!(calls.none_started(), "no call leaves while the budget's one is out");
        calls.end(1);
        assert_eq!(
            calls.next().await,
            ('b', 3),
            "the queue that asked first goes next, with every request it piled up"
        );
        settle().await;
        assert!(calls.none_started(), "c waits for b's call");
        calls.end(1);
        assert_eq!(calls.next().await, ('c', 1));
        calls.end(1);
        settle().await;
        assert!(calls.none_started(), "nothing else was waiting");
    }

    #[tokio::test]
    async fn a_group_worth_its_own_call_does_not_wait_for_the_budget() {
        let budget = Budget::new(1);
        let mut calls = Calls::new();
        let a = calls.queue('a', 10, Some(&budget));
        let b = calls.queue('b', 10, Some(&budget));
        a.send(1).unwrap();
        assert_eq!(calls.next().await, ('a', 1));
        b.send(3).unwrap();
        settle().await;
        assert!(calls.none_started(), "3 units wait for the budget");
        b.send(7).unwrap();
        assert_eq!(
            calls.next().await,
            ('b', 10),
            "10 units leave while the budget's call is out"
        );
        calls.end(2);
        settle().await;
        // b's request for the budget was dropped with its call: a's next
        // call takes the budget at once
        a.send(1).unwrap();
        assert_eq!(calls.next().await, ('a', 1));
        calls.end(1);
    }

    #[tokio::test]
    async fn without_a_budget_queues_do_not_wait_for_each_other() {
        let mut calls = Calls::new();
        let (a, b) = (calls.queue('a', 100, None), calls.queue('b', 100, None));
        a.send(1).unwrap();
        assert_eq!(calls.next().await, ('a', 1));
        b.send(1).unwrap();
        assert_eq!(calls.next().await, ('b', 1), "b's call leaves while a's is out");
        calls.end(2);
    }

    #[test]
    fn partitions_share_the_calls_in_flight() {
        assert_eq!(share(4, 1), 4);
        assert_eq!(share(4, 0), 4, "no partition count is one partition");
        assert_eq!(share(4, 2), 2);
        assert_eq!(share(4, 3), 1);
        assert_eq!(share(4, 16), 1, "every partition keeps a call");
    }
}
