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
//! away meanwhile.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

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

/// Starts the queue's task: `size` tells a request's units, `call` carries
/// out one group (in queue order) and answers each of its requests. The
/// task ends when every sender of the returned queue is dropped.
pub(super) fn start<J, F, Fut>(policy: Policy, size: fn(&J) -> usize, call: F) -> mpsc::UnboundedSender<J>
where
    J: Send + 'static,
    F: Fn(Vec<J>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(policy, size, call, rx));
    tx
}

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

async fn run<J, F, Fut>(policy: Policy, size: fn(&J) -> usize, call: F, mut rx: mpsc::UnboundedReceiver<J>)
where
    J: Send + 'static,
    F: Fn(Vec<J>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(policy.in_flight));
    // a call ended: the loop may send what waits
    let ended = Arc::new(Notify::new());
    let mut queue: VecDeque<J> = VecDeque::new();
    let mut queued = 0usize;
    let mut open = true;
    loop {
        while let Ok(j) = rx.try_recv() {
            queued += size(&j);
            queue.push_back(j);
        }
        let busy = policy.in_flight - slots.available_permits();
        if queue.is_empty() {
            if !open {
                return;
            }
        } else if busy == 0 || (busy < policy.in_flight && queued >= policy.min_size) {
            // only this task takes permits, and one is free
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let mut units = 0;
            let mut group = Vec::new();
            while let Some(j) = queue.front() {
                let n = size(j);
                if !group.is_empty() && units + n > policy.max_size {
                    break;
                }
                units += n;
                group.extend(queue.pop_front());
            }
            queued -= units;
            let done = call(group);
            let ended = ended.clone();
            tokio::spawn(async move {
                done.await;
                drop(permit);
                ended.notify_one();
            });
            continue;
        }
        tokio::select! {
            () = ended.notified() => {}
            j = rx.recv(), if open => match j {
                Some(j) => {
                    queued += size(&j);
                    queue.push_back(j);
                }
                None => open = false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn partitions_share_the_calls_in_flight() {
        assert_eq!(share(4, 1), 4);
        assert_eq!(share(4, 0), 4, "no partition count is one partition");
        assert_eq!(share(4, 2), 2);
        assert_eq!(share(4, 3), 1);
        assert_eq!(share(4, 16), 1, "every partition keeps a call");
    }
}
