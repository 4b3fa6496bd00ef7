//! Group commit by node: the writes of every partition one Redis primary
//! holds leave in one call (`apply_many`, `lua/apply_many.lua`).
//!
//! Why: a call costs Redis a fixed amount beyond its operations (reading
//! and answering it, waking the replica, `WAIT`), and a call per
//! partition, each carrying only its partition's writes, paid that cost
//! several times as often as one Redis holding the whole state
//! (BENCHMARKS.md). Each node here has one queue (`group.rs`) taking the
//! writes of all the partitions that node holds.
//!
//! On a cluster a node's queue keeps [`NODE_IN_FLIGHT`] call out, and the
//! small calls (below `MIN_GROUP_OPS` operations) of all the nodes share
//! a [`Budget`] of [`CLUSTER_BUDGET`]: the primaries answer in parallel,
//! so with as many calls out as one Redis gets per node, each call would
//! carry fewer writes and Redis would pay its fixed cost more often. On
//! one Redis (partitions without a cluster) the one node's queue has the
//! policy of a store holding the whole state.
//!
//! Where each partition is comes from `CLUSTER SLOTS`, read when the first
//! write comes, then every [`PLACEMENT_REFRESH`] and at once when a call
//! finds a partition gone. A stale placement costs calls, never
//! correctness: the call is routed by its first partition's anchor key
//! (MOVED and ASK followed as for any call), and `apply_many` runs only
//! the partitions whose state is on the node it reached, answering the
//! others as absent; those are then sent on their own, each routed by its
//! own key. On one Redis (no cluster) every partition is on the one node.
//!
//! A partition's writes are applied in the order they arrived, as with a
//! queue per partition: a node's queue keeps one call out on a cluster
//! (a second call could overtake the first while that one follows a
//! MOVED), a section found elsewhere is sent again before the queue's
//! next call, and a partition moves to another node's queue only once
//! none of its writes wait in the old one. Within a call each partition's
//! writes keep their order; writes of different partitions touch
//! different state.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use redis::Value;
use tokio::sync::{mpsc, Notify};

use super::group::{self, Budget, Policy};
use super::writer::{self, Job, Sender as _};
use super::{codec, functions, keys, ApplySender, Conn, Function, BATCH_ALLOWANCE_PER_OP};
use crate::domain::Applied;
use crate::error::{Error, Result};

/// How often the placement of partitions is read again while writes come.
pub(super) const PLACEMENT_REFRESH: Duration = Duration::from_secs(1);
/// Calls a node's queue keeps out at once on a cluster.
const NODE_IN_FLIGHT: usize = crate::config::defaults::REDIS_NODE_WRITES_IN_FLIGHT;
/// Small calls out at once over all the nodes of a cluster.
const CLUSTER_BUDGET: usize = crate::config::defaults::REDIS_CLUSTER_WRITE_BUDGET;

/// Where a partition's writes go.
#[derive(Default)]
struct Route {
    /// The node of its last placement read.
    placed: usize,
    /// The node whose queue its pending writes are in.
    node: usize,
    /// Its writes in that queue or in a call, not yet answered.
    pending: usize,
    /// Its writes held back while it moves: they go to the `placed` node
    /// once none is pending on the old one, so that none overtakes an
    /// older write.
    held: Vec<Job>,
}

/// A write of one partition.
pub(super) struct PartJob {
    partition: usize,
    job: Job,
}

/// The node queues of a replica's partitions.
pub(super) struct NodeWriter {
    inner: Arc<Inner>,
}

struct Inner {
    /// Each partition's own sender (its configuration, replication, and
    /// the call for a partition that was not where the placement said).
    parts: Vec<ApplySender>,
    conn: Conn,
    /// Whether the state is on a cluster (else on one node).
    cluster: bool,
    /// Where each partition's writes go.
    routes: Mutex<Vec<Route>>,
    /// Node ids seen, by index (never reused, so a queue keeps its node).
    node_ids: Mutex<HashMap<String, usize>>,
    /// One write queue per node index, started on first use.
    queues: Mutex<HashMap<usize, mpsc::UnboundedSender<PartJob>>>,
    /// On a cluster, the small calls all nodes' queues share.
    budget: Option<Budget>,
    /// Wakes the placement task early.
    stale: Notify,
    /// The placement task, started with the first write.
    started: OnceLock<()>,
}

impl NodeWriter {
    /// The writer of `parts` (partition `p` at index `p`), on a cluster
    /// or on one Redis.
    pub(super) fn new(parts: Vec<ApplySender>, conn: Conn, cluster: bool) -> Self {
        let n = parts.len();
        Self {
            inner: Arc::new(Inner {
                parts,
                conn,
                cluster,
                routes: Mutex::new((0..n).map(|_| Route::default()).collect()),
                node_ids: Mutex::new(HashMap::new()),
                queues: Mutex::new(HashMap::new()),
                budget: cluster.then(|| Budget::new(CLUSTER_BUDGET)),
                stale: Notify::new(),
                started: OnceLock::new(),
            }),
        }
    }

    /// Queues a write of `partition` on its node's queue.
    pub(super) fn send(&self, partition: usize, job: Job) -> Result<()> {
        let inner = &self.inner;
        if inner.cluster {
            inner.started.get_or_init(|| {
                tokio::spawn(follow_placement(Arc::downgrade(inner)));
            });
        }
        inner.enqueue(partition, vec![job])
    }
}

/// Starts one node's queue; with a `budget` (a cluster), one call out at
/// a time, else the policy of a store holding the whole state.
fn start_queue(inner: Weak<Inner>, budget: Option<Budget>) -> mpsc::UnboundedSender<PartJob> {
    let policy = Policy {
        in_flight: if budget.is_some() {
            NODE_IN_FLIGHT
        } else {
            writer::IN_FLIGHT
        },
        min_size: writer::MIN_GROUP_OPS,
        max_size: writer::MAX_GROUP_OPS,
    };
    group::start(
        policy,
        budget,
        |j: &PartJob| j.job.ops.len(),
        move |jobs: Vec<PartJob>| {
            let inner = inner.upgrade();
            async move {
                match inner {
                    Some(inner) => inner.run(jobs).await,
                    None => {
                        let replies = jobs.into_iter().map(|j| j.job.reply).collect();
                        group::answer(replies, Err(Error::Internal("the store was dropped".into())), "apply");
                    }
                }
            }
        },
    )
}

impl Inner {
    /// Runs one node's group: one `apply_many` call, then each partition
    /// it did not find on its own.
    async fn run(self: Arc<Self>, jobs: Vec<PartJob>) {
        // by partition, each in arrival order
        let mut by_part: BTreeMap<usize, Vec<Job>> = BTreeMap::new();
        for PartJob { partition, job } in jobs {
            by_part.entry(partition).or_default().push(job);
        }
        let sections: Vec<(usize, Vec<Job>)> = by_part.into_iter().collect();
        if let [(p, jobs)] = &sections[..] {
            // one partition: its own call, as without node queues
            let answers = self.parts[*p].send(jobs).await;
            return self.answer(sections, vec![Some(answers)]);
        }
        let answers = match self.call(&sections).await {
            Ok(answers) => answers,
            Err(e) => sections.iter().map(|_| Some(Err(e.clone()))).collect(),
        };
        let mut answers: Vec<Option<Result<Vec<Applied>>>> = answers;
        let mut moved = 0;
        for ((p, jobs), a) in sections.iter().zip(answers.iter_mut()) {
            if a.is_none() {
                moved += 1;
                *a = Some(self.parts[*p].send(jobs).await);
            }
        }
        if moved > 0 {
            crate::telemetry::store().partitions_elsewhere(moved);
            self.stale.notify_one();
        }
        self.answer(sections, answers);
    }

    /// One `apply_many` call of `sections`: per section its answers, or
    /// `None` when its partition was not on the node the call reached.
    async fn call(&self, sections: &[(usize, Vec<Job>)]) -> Result<Vec<Option<Result<Vec<Applied>>>>> {
        let first = &self.parts[sections[0].0];
        let mut inv = redis::cmd("FCALL");
        inv.arg(functions::name(Function::ApplyMany));
        if self.cluster {
            inv.arg(1).arg(keys::anchor(&first.cfg.key_prefix)).arg("1");
        } else {
            inv.arg(0).arg("0");
        }
        let (mut writes, mut total) = (0, 0);
        for (p, jobs) in sections {
            let cfg = &self.parts[*p].cfg;
            let mut section = functions::call_args(cfg);
            let ttl_ms = cfg.default_ttl.as_millis() as u64;
            total += codec::apply_args(&mut section, ttl_ms, cfg.event_shards, jobs);
            writes += jobs.len();
            let args: Vec<&[u8]> = section
                .args_iter()
                .filter_map(|a| match a {
                    redis::Arg::Simple(bytes) => Some(bytes),
                    _ => None,
                })
                .collect();
            inv.arg(args.len());
            for a in args {
                inv.arg(a);
            }
        }
        crate::telemetry::store().group_commit(writes, total);
        let limit = first.cfg.timeout + BATCH_ALLOWANCE_PER_OP * total as u32;
        let mut conn = self.conn.clone();
        let raw: Vec<Value> = first.replication.run("apply", limit, &mut conn, &inv).await?;
        if raw.len() != sections.len() {
            return Err(Error::Internal(format!(
                "apply_many answered {} sections of {}",
                raw.len(),
                sections.len()
            )));
        }
        Ok(sections
            .iter()
            .zip(raw)
            .map(|((_, jobs), v)| match v {
                Value::Nil => None,
                Value::Array(values) => Some(codec::apply_results(jobs, &values)),
                Value::ServerError(e) => Some(Err(Error::Internal(format!("apply function: {e:?}")))),
                other => Some(Err(Error::Internal(format!(
                    "apply_many answered a section with {other:?}"
                )))),
            })
            .collect())
    }

    /// Queues writes of `partition` (in order) on the queue of its node,
    /// or holds them while it moves to another node and writes of it are
    /// still pending on the old one.
    fn enqueue(self: &Arc<Self>, partition: usize, jobs: Vec<Job>) -> Result<()> {
        let mut routes = self.routes.lock().expect("routes lock");
        self.push(&mut routes[partition], partition, jobs)
    }

    /// [`Inner::enqueue`] with the routes locked: a write is in its
    /// queue before another write of its partition is routed.
    fn push(self: &Arc<Self>, route: &mut Route, partition: usize, jobs: Vec<Job>) -> Result<()> {
        if route.pending == 0 {
            route.node = route.placed;
        }
        if route.node != route.placed || !route.held.is_empty() {
            route.held.extend(jobs);
            return Ok(());
        }
        let queue = {
            let mut queues = self.queues.lock().expect("queues lock");
            queues
                .entry(route.node)
                .or_insert_with(|| start_queue(Arc::downgrade(self), self.budget.clone()))
                .clone()
        };
        for job in jobs {
            queue
                .send(PartJob { partition, job })
                .map_err(|_| Error::Internal("the write queue is closed".into()))?;
            route.pending += 1;
        }
        Ok(())
    }

    /// Answers each section's writes from its answers; its partition's
    /// writes are no longer pending, and those held while it moved go to
    /// its new node once none is.
    fn answer(self: &Arc<Self>, sections: Vec<(usize, Vec<Job>)>, answers: Vec<Option<Result<Vec<Applied>>>>) {
        for ((p, jobs), a) in sections.into_iter().zip(answers) {
            {
                let mut routes = self.routes.lock().expect("routes lock");
                let route = &mut routes[p];
                route.pending -= jobs.len();
                if route.pending == 0 && !route.held.is_empty() {
                    route.node = route.placed;
                    let held = std::mem::take(&mut route.held);
                    if let Err(e) = self.push(route, p, held) {
                        // only while the store is being dropped
                        tracing::warn!(error = %e, "writes held while their partition moved could not be queued");
                    }
                }
            }
            let a = a.unwrap_or_else(|| Err(Error::Internal("a section was not answered".into())));
            group::answer(jobs.into_iter().map(|j| j.reply).collect(), a, "apply function");
        }
    }

    /// Reads where each partition is (`CLUSTER SLOTS`).
    async fn refresh(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let timeout = self.parts[0].cfg.timeout;
        let slots: Value = super::failure::within(
            "placement",
            timeout,
            redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut conn),
        )
        .await?;
        let ranges = slot_owners(&slots);
        let mut ids = self.node_ids.lock().expect("node ids lock");
        let placed: Vec<usize> = self
            .parts
            .iter()
            .map(|part| {
                let slot = keys::prefix_slot(&part.cfg.key_prefix);
                let owner = ranges
                    .iter()
                    .find(|(lo, hi, _)| (*lo..=*hi).contains(&slot))
                    .map_or("", |(_, _, id)| id.as_str());
                let next = ids.len();
                *ids.entry(owner.to_string()).or_insert(next)
            })
            .collect();
        drop(ids);
        let mut routes = self.routes.lock().expect("routes lock");
        for (route, node) in routes.iter_mut().zip(placed) {
            route.placed = node;
        }
        Ok(())
    }
}

/// Keeps the placement current while the store lives; a failed read
/// keeps the last one (the calls still go where the state is).
async fn follow_placement(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else { return };
        if let Err(e) = strong.refresh().await {
            tracing::debug!(error = %e, "reading where the partitions are failed; the last placement stays");
        }
        let stale = async { strong.stale.notified().await };
        tokio::select! {
            () = tokio::time::sleep(PLACEMENT_REFRESH) => {}
            () = stale => {}
        }
    }
}

/// The slot ranges of a `CLUSTER SLOTS` reply and their primaries' ids
/// (`host:port` when a reply carries no id).
fn slot_owners(reply: &Value) -> Vec<(u16, u16, String)> {
    let Value::Array(ranges) = reply else { return Vec::new() };
    ranges
        .iter()
        .filter_map(|r| {
            let Value::Array(r) = r else { return None };
            let (Some(Value::Int(lo)), Some(Value::Int(hi)), Some(Value::Array(node))) =
                (r.first(), r.get(1), r.get(2))
            else {
                return None;
            };
            let text = |v: &Value| match v {
                Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
                Value::SimpleString(s) => Some(s.clone()),
                Value::Int(i) => Some(i.to_string()),
                _ => None,
            };
            let id = node
                .get(2)
                .and_then(text)
                .or_else(|| Some(format!("{}:{}", text(node.first()?)?, text(node.get(1)?)?)))?;
            Some((u16::try_from(*lo).ok()?, u16::try_from(*hi).ok()?, id))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn cluster_slots_give_each_range_its_primary() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(7000), bulk("aaa")]),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(7003), bulk("ddd")]),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(7001)]),
            ]),
            Value::Nil,
        ]);
        assert_eq!(
            slot_owners(&reply),
            [
                (0, 5460, "aaa".to_string()),
                (5461, 16383, "127.0.0.1:7001".to_string())
            ]
        );
    }
}
