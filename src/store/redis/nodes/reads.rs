//! Read coalescing by node: the small reads of every partition one Redis
//! primary holds leave in one call (`get_many`, `lua/get_many.lua`).
//!
//! Why: as with writes (`nodes/mod.rs`), a command costs Redis a fixed
//! amount beyond its keys (reading and answering it, waking up for it),
//! and a read queue per partition merged only that partition's reads, so
//! on a cluster a Get cost Redis about twice what it costs on one Redis
//! holding the whole state (BENCHMARKS.md). Each node here has one queue
//! taking the reads of all the partitions it holds; a group of one
//! partition's reads is one `MGET`, as before.
//!
//! Reads need no order, so a partition's reads simply go to the queue of
//! the node of the last placement read. A section whose partition is not
//! on the node the call reached is read again on its own, routed by its
//! keys (MOVED and ASK followed as for any command), and makes the
//! placement be read again.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use redis::Value;
use tokio::sync::{mpsc, oneshot};

use super::super::failure::within;
use super::super::group::{self, Policy};
use super::super::{functions, keys, reads, Function};
use super::{Inner, Nodes};
use crate::error::{Error, Result};

/// Read calls a node's queue keeps out at once on a cluster (one Redis
/// holding every partition keeps as many as a store of the whole state).
const NODE_IN_FLIGHT: usize = crate::config::defaults::REDIS_NODE_READS_IN_FLIGHT;

/// The values of some keys of one partition, wanted by one call.
pub(in super::super) struct PartRead {
    partition: usize,
    keys: Vec<String>,
    reply: oneshot::Sender<Result<Values>>,
}

/// The values of keys, in order (`None`: no such key).
type Values = Vec<Option<Vec<u8>>>;

impl Nodes {
    /// Reads `keys` (all of `partition`) through the queue of the node
    /// holding the partition.
    pub(in super::super) async fn read(&self, partition: usize, keys: Vec<String>) -> Result<Values> {
        let inner = &self.inner;
        inner.follow();
        let node = inner.routes.lock().expect("routes lock")[partition].placed;
        let queue = {
            let mut queues = inner.read_queues.lock().expect("read queues lock");
            queues
                .entry(node)
                .or_insert_with(|| start_queue(Arc::downgrade(inner)))
                .clone()
        };
        let (reply, answer) = oneshot::channel();
        queue
            .send(PartRead { partition, keys, reply })
            .map_err(|_| Error::Internal("the read queue is closed".into()))?;
        answer
            .await
            .map_err(|_| Error::Internal("the read queue dropped a read".into()))?
    }
}

/// Starts one node's read queue.
fn start_queue(inner: Weak<Inner>) -> mpsc::UnboundedSender<PartRead> {
    let cluster = inner.upgrade().is_some_and(|i| i.cluster);
    let policy = Policy {
        in_flight: if cluster { NODE_IN_FLIGHT } else { reads::IN_FLIGHT },
        min_size: 1,
        max_size: reads::MAX_KEYS,
    };
    group::start(
        policy,
        None,
        |r: &PartRead| r.keys.len(),
        move |reads: Vec<PartRead>| {
            let inner = inner.upgrade();
            async move {
                match inner {
                    Some(inner) => inner.read_group(reads).await,
                    None => {
                        let replies = reads.into_iter().map(|r| r.reply).collect();
                        group::answer(replies, Err(Error::Internal("the store was dropped".into())), "get");
                    }
                }
            }
        },
    )
}

impl Inner {
    /// Runs one node's group of reads: one `get_many` call (one `MGET`
    /// when they are all of one partition), then an `MGET` of each
    /// partition the call did not find.
    async fn read_group(self: Arc<Self>, reads: Vec<PartRead>) {
        let mut by_part: BTreeMap<usize, Vec<PartRead>> = BTreeMap::new();
        for r in reads {
            by_part.entry(r.partition).or_default().push(r);
        }
        let sections: Vec<(usize, Vec<PartRead>)> = by_part.into_iter().collect();
        let mut answers: Vec<Option<Result<Values>>> = if sections.len() == 1 {
            vec![None]
        } else {
            match self.get_many(&sections).await {
                Ok(found) => {
                    let elsewhere = found.iter().filter(|f| f.is_none()).count();
                    if elsewhere > 0 {
                        crate::telemetry::store().partitions_elsewhere(elsewhere as u64);
                        self.stale.notify_one();
                    }
                    found.into_iter().map(|f| f.map(Ok)).collect()
                }
                Err(e) => sections.iter().map(|_| Some(Err(e.clone()))).collect(),
            }
        };
        for ((p, reads), a) in sections.iter().zip(answers.iter_mut()) {
            if a.is_none() {
                *a = Some(self.mget(*p, reads).await);
            }
        }
        for ((_, reads), a) in sections.into_iter().zip(answers) {
            let a = a.unwrap_or_else(|| Err(Error::Internal("a section was not read".into())));
            answer(reads, a);
        }
    }

    /// One `MGET` of the keys of `reads`, all of `partition`, routed by
    /// them.
    async fn mget(&self, partition: usize, reads: &[PartRead]) -> Result<Values> {
        let want: usize = reads.iter().map(|r| r.keys.len()).sum();
        crate::telemetry::store().merged_read(want);
        let mut cmd = redis::cmd("MGET");
        for r in reads {
            cmd.arg(&r.keys);
        }
        let mut conn = self.conn.clone();
        let values: Values = within("get", self.parts[partition].cfg.timeout, cmd.query_async(&mut conn)).await?;
        if values.len() != want {
            return Err(Error::Internal(format!(
                "MGET returned {} values for {want} keys",
                values.len()
            )));
        }
        Ok(values)
    }

    /// One `get_many` call of `sections`: per section its keys' values, or
    /// `None` when its partition was not on the node the call reached.
    async fn get_many(&self, sections: &[(usize, Vec<PartRead>)]) -> Result<Vec<Option<Values>>> {
        let first = &self.parts[sections[0].0].cfg;
        let mut inv = redis::cmd("FCALL");
        inv.arg(functions::name(Function::GetMany));
        if self.cluster {
            inv.arg(1).arg(keys::anchor(&first.key_prefix));
        } else {
            inv.arg(0);
        }
        let mut want = Vec::with_capacity(sections.len());
        for (_, reads) in sections {
            let n: usize = reads.iter().map(|r| r.keys.len()).sum();
            inv.arg(n);
            for r in reads {
                inv.arg(&r.keys);
            }
            want.push(n);
        }
        crate::telemetry::store().merged_read(want.iter().sum());
        let mut conn = self.conn.clone();
        let raw: Value = within("get", first.timeout, functions::invoke(&mut conn, &inv)).await?;
        parse_sections(raw, &want)
    }
}

/// The reply of `get_many` for sections of `want[i]` keys each.
fn parse_sections(raw: Value, want: &[usize]) -> Result<Vec<Option<Values>>> {
    let bad = |what: String| Error::Internal(format!("get_many answered {what}"));
    let Value::Array(sections) = raw else {
        return Err(bad(format!("{raw:?}")));
    };
    if sections.len() != want.len() {
        return Err(bad(format!("{} sections of {}", sections.len(), want.len())));
    }
    sections
        .into_iter()
        .zip(want)
        .map(|(s, &n)| match s {
            Value::Nil => Ok(None),
            Value::Array(values) if values.len() == n => values
                .into_iter()
                .map(|v| match v {
                    Value::Nil => Ok(None),
                    Value::BulkString(b) => Ok(Some(b)),
                    other => Err(bad(format!("a value {other:?}"))),
                })
                .collect::<Result<Values>>()
                .map(Some),
            other => Err(bad(format!("a section {other:?} for {n} keys"))),
        })
        .collect()
}

/// Answers each read of a section with its share of the section's values.
fn answer(reads: Vec<PartRead>, values: Result<Values>) {
    match values {
        Ok(values) => {
            let mut values = values.into_iter();
            for r in reads {
                let mine: Values = values.by_ref().take(r.keys.len()).collect();
                // a caller that gave up (a timeout) wants nothing
                let _unwanted = r.reply.send(Ok(mine));
            }
        }
        Err(e) => {
            let replies = reads.into_iter().map(|r| r.reply).collect();
            group::answer(replies, Err(e), "get");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_get_many_reply_gives_each_section_its_values_or_none_when_elsewhere() {
        let raw = Value::Array(vec![
            Value::Array(vec![bulk("a"), Value::Nil]),
            Value::Nil,
            Value::Array(vec![bulk("c")]),
        ]);
        let got = parse_sections(raw, &[2, 3, 1]).expect("parsed");
        assert_eq!(
            got,
            [
                Some(vec![Some(b"a".to_vec()), None]),
                None,
                Some(vec![Some(b"c".to_vec())])
            ]
        );
        // a section with another number of values than keys is an error
        let short = Value::Array(vec![Value::Array(vec![bulk("a")])]);
        assert!(parse_sections(short, &[2]).is_err());
        assert!(parse_sections(Value::Array(vec![]), &[1]).is_err());
    }
}
