//! Read coalescing: the counters that concurrent GetOccupancy calls (and
//! BatchGetOccupancy calls of fewer than [`MERGE_BELOW`] channels) of a
//! replica ask for are read with one MGET
//! (merged by `group.rs`: with no read in flight a read leaves at once;
//! under load the reads waiting leave together when one of the call slots
//! is free).
//!
//! Why: one GET per call cost Redis a command and the replica a
//! multiplexed request each (a queue hop, a reply channel, a timeout
//! timer). Merged, many Gets in flight share one command and one request,
//! which raised the throughput of concurrent Gets and cut Redis' CPU per
//! Get (BENCHMARKS.md).

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::group::{self, Policy};
use crate::error::{Error, Result};

/// Reads outstanding at once.
const IN_FLIGHT: usize = crate::config::defaults::REDIS_READS_IN_FLIGHT;
/// Reads of this many keys or more (a BatchGetOccupancy of many channels)
/// go straight to Redis: their command's fixed cost is already small
/// against its keys, and merged they only waited for a slot (large batch
/// gets were slower merged than alone in paired runs).
pub(super) const MERGE_BELOW: usize = crate::config::defaults::REDIS_MERGE_READS_BELOW;
/// Keys in one MGET at most (a larger read goes alone): bounds how long one
/// command holds Redis.
pub(super) const MAX_KEYS: usize = crate::config::defaults::REDIS_MAX_READ_KEYS;

/// The values of some keys, wanted by one call.
pub(super) struct Read {
    pub keys: Vec<String>,
    pub reply: oneshot::Sender<Result<Vec<Option<Vec<u8>>>>>,
}

/// Reads keys with one command.
pub(super) trait Fetch: Send + Sync + 'static {
    /// The value of every key, in order.
    fn mget(&self, keys: Vec<String>) -> impl Future<Output = Result<Vec<Option<Vec<u8>>>>> + Send;
}

/// Starts the read queue's task of a store split into `partitions` (its
/// share of [`IN_FLIGHT`], see [`group::share`]); it ends when every sender
/// of the returned queue is dropped.
pub(super) fn start<F: Fetch>(fetch: F, partitions: u32) -> mpsc::UnboundedSender<Read> {
    let fetch = Arc::new(fetch);
    let policy = Policy {
        in_flight: group::share(IN_FLIGHT, partitions),
        min_size: 1,
        max_size: MAX_KEYS,
    };
    group::start(
        policy,
        None,
        |r: &Read| r.keys.len(),
        move |mut reads: Vec<Read>| {
            let fetch = fetch.clone();
            async move {
                let lens: Vec<usize> = reads.iter().map(|r| r.keys.len()).collect();
                let mut keys = Vec::with_capacity(lens.iter().sum());
                for r in &mut reads {
                    keys.append(&mut r.keys);
                }
                let want = keys.len();
                let answers = fetch.mget(keys).await.and_then(|values| {
                    if values.len() != want {
                        return Err(Error::Internal(format!(
                            "MGET returned {} values for {want} keys",
                            values.len()
                        )));
                    }
                    let mut values = values.into_iter();
                    Ok(lens.iter().map(|n| values.by_ref().take(*n).collect()).collect())
                });
                group::answer(reads.into_iter().map(|r| r.reply).collect(), answers, "MGET");
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::Semaphore;

    use super::*;

    /// Answers each key with its own name, records every call's keys, and
    /// holds calls until released when `hold` is set.
    struct Fake {
        calls: Mutex<Vec<Vec<String>>>,
        started: mpsc::UnboundedSender<usize>,
        release: Semaphore,
        hold: bool,
        fail: bool,
    }

    impl Fetch for Arc<Fake> {
        async fn mget(&self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>> {
            self.calls.lock().unwrap().push(keys.clone());
            let _ = self.started.send(keys.len());
            if self.hold {
                self.release.acquire().await.expect("open").forget();
            }
            if self.fail {
                return Err(Error::Unavailable("down".into()));
            }
            Ok(keys
                .into_iter()
                .map(|k| (k != "absent").then(|| k.into_bytes()))
                .collect())
        }
    }

    fn fake(hold: bool, fail: bool) -> (Arc<Fake>, mpsc::UnboundedReceiver<usize>) {
        let (started, rx) = mpsc::unbounded_channel();
        let f = Arc::new(Fake {
            calls: Mutex::new(Vec::new()),
            started,
            release: Semaphore::new(0),
            hold,
            fail,
        });
        (f, rx)
    }

    fn read(tx: &mpsc::UnboundedSender<Read>, keys: &[&str]) -> oneshot::Receiver<Result<Vec<Option<Vec<u8>>>>> {
        let (reply, rx) = oneshot::channel();
        let keys = keys.iter().map(|k| k.to_string()).collect();
        tx.send(Read { keys, reply }).map_err(|_| "queue closed").unwrap();
        rx
    }

    fn values(v: Vec<Option<Vec<u8>>>) -> Vec<Option<String>> {
        v.into_iter()
            .map(|v| v.map(|b| String::from_utf8(b).unwrap()))
            .collect()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reads_waiting_for_a_free_slot_leave_as_one_mget_and_each_gets_its_values() {
        let (f, mut started) = fake(true, false);
        let tx = start(f.clone(), 1);
        // reads arriving one at a time leave at once while a slot is free
        let mut first = Vec::new();
        for i in 0..IN_FLIGHT {
            first.push(read(&tx, &[&format!("k{i}")]));
            assert_eq!(started.recv().await, Some(1));
        }
        // these wait for a slot, then leave together
        let a = read(&tx, &["a1", "absent", "a2"]);
        let b = read(&tx, &["b1"]);
        let c = read(&tx, &["c1", "c2"]);
        f.release.add_permits(1);
        assert_eq!(started.recv().await, Some(6));
        f.release.add_permits(IN_FLIGHT);
        for (i, rx) in first.into_iter().enumerate() {
            assert_eq!(values(rx.await.unwrap().unwrap()), [Some(format!("k{i}"))]);
        }
        let s = |v: &str| Some(v.to_string());
        assert_eq!(values(a.await.unwrap().unwrap()), [s("a1"), None, s("a2")]);
        assert_eq!(values(b.await.unwrap().unwrap()), [s("b1")]);
        assert_eq!(values(c.await.unwrap().unwrap()), [s("c1"), s("c2")]);
        assert_eq!(
            f.calls.lock().unwrap()[IN_FLIGHT],
            ["a1", "absent", "a2", "b1", "c1", "c2"]
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_mget_holds_at_most_max_keys_and_a_failure_reaches_every_read_of_it() {
        let (f, _started) = fake(false, false);
        let tx = start(f.clone(), 1);
        let big: Vec<String> = (0..MAX_KEYS - 1).map(|i| format!("k{i}")).collect();
        let big: Vec<&str> = big.iter().map(String::as_str).collect();
        let r1 = read(&tx, &big);
        let r2 = read(&tx, &["x", "y"]);
        r1.await.unwrap().unwrap();
        r2.await.unwrap().unwrap();
        let sizes: Vec<usize> = f.calls.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, [MAX_KEYS - 1, 2]);

        let (f, _started) = fake(false, true);
        let tx = start(f.clone(), 1);
        let r1 = read(&tx, &["a"]);
        let r2 = read(&tx, &["b"]);
        assert!(matches!(r1.await.unwrap(), Err(Error::Unavailable(_))));
        assert!(matches!(r2.await.unwrap(), Err(Error::Unavailable(_))));
        assert_eq!(f.calls.lock().unwrap().len(), 1, "both reads in one MGET");
    }
}
