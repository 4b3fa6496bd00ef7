//! Integration rules and delivery queues in Redis: the
//! [`IntegrationStore`] of [`RedisStore`](super::RedisStore), behaving as
//! [`MemoryIntegrations`](crate::integrations::MemoryIntegrations) does
//! (same entries, order and errors; `tests/it/integrations/store/` runs
//! the same assertions on both, and feeds both the same random changes).
//!
//! The keys are in the layout table of [`keys`] (`P:int:…`). Each step
//! that reads and writes, or writes several keys, is one Lua script under
//! `lua/integrations/` run with EVALSHA (`redis::Script`, which loads the
//! script again when Redis answers NOSCRIPT, so a Redis that restarted
//! empty works at once). They are standalone scripts rather than functions
//! of the main library (`functions.rs`): they are called far less often
//! than a write, so the prelude a library saves does not matter, and they
//! stay out of the library's hash, which versions the occupancy calls.
//! Every script gets its keys as `KEYS`, built by [`keys`] only.
//!
//! - **enqueue** (`enqueue.lua`): checks the rules version, skips changes
//!   at or before the shard's high-water mark, decides the entries as
//!   [`entries_for`](crate::integrations::entries::entries_for) does against
//!   `P:int:last`, and appends them with `XADD *`. The arguments are one
//!   flat list: the call's rules as want and category bits (their queues
//!   are `KEYS`), then five values per change. Positions (pairs of `u64`)
//!   and metrics stay canonical decimal strings in Lua, compared by length
//!   then digit by digit: exact where doubles are not (sequence numbers
//!   past 2^53), and free of the locale that Lua's `<` on strings follows.
//! - **put_rule** checks the rule count or the rule's existence in the same
//!   step as it stores; **delete_rule** removes the rule and everything of
//!   it and bumps the version in one `MULTI`.
//! - **complete** and **discard** are `XDEL` and `HDEL` in one `MULTI`;
//!   **stage** and **kill** are scripts, as they do nothing for a rule that
//!   was deleted meanwhile (else the staged hash or dead list would outlive
//!   it).
//! - **lease**: `SET PX` when free or held by the caller, in a script;
//!   **release** deletes only the caller's lease.
//! - **replay** decodes the dead letters in Lua (`cjson`), appends their
//!   entries and rewrites the list without them in one step: concurrent
//!   replays can neither lose nor duplicate a letter.
//!
//! Every call is bounded by the store's timeout (`failure::within`; an
//! enqueue gets more per change, as a large write does), so a Redis that
//! does not answer is UNAVAILABLE, as for the occupancy calls. A script
//! that runs past the bound still completes in Redis, so a caller may
//! retry a step that was done: an enqueue again is skipped by the
//! high-water mark, a replay again finds its letters gone, a complete or
//! discard again removes nothing; only a kill again adds its letter a
//! second time (as the memory store's kill does when called twice).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use async_trait::async_trait;
use redis::Script;

use super::conn::{Conn, Topology};
use super::failure::within;
use super::keys;
use crate::error::{Error, Result};
use crate::integrations::limits;
use crate::integrations::store::{Enqueued, RuleRef, SourceEvent};
use crate::integrations::{DeadLetter, Entry, IntegrationStore, Rule, Staged};

mod codec;

/// First and longest wait before following the wake channel again.
const WAKE_RETRY_MIN: Duration = Duration::from_millis(100);
const WAKE_RETRY_MAX: Duration = Duration::from_secs(5);

/// The `call` label of every integration call's metrics.
const CALL: &str = "integrations";

/// Extra time allowed per unit of an enqueue's work beyond the timeout.
const BATCH_ALLOWANCE_PER_OP: Duration = crate::config::defaults::REDIS_BATCH_ALLOWANCE_PER_OP;

static ENQUEUE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/integrations/enqueue.lua")));
static PUT_RULE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/integrations/put_rule.lua")));
static LEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/integrations/lease.lua")));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/integrations/release.lua")));
static STAGE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/integrations/stage.lua")));
static KILL: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/integrations/kill.lua")));
static REPLAY: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/integrations/replay.lua")));

/// Integration rules and queues in the Redis of a [`RedisStore`](super::RedisStore).
#[derive(Clone)]
pub struct RedisIntegrations {
    topology: Topology,
    conn: Conn,
    prefix: String,
    timeout: Duration,
}

impl std::fmt::Debug for RedisIntegrations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisIntegrations")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisIntegrations {
    /// On the store's connection, under its key prefix, with its timeout.
    pub(super) fn new(topology: Topology, conn: Conn, prefix: String, timeout: Duration) -> Self {
        Self {
            topology,
            conn,
            prefix,
            timeout,
        }
    }

    /// Follows the wake channel on a connection of its own (a subscribed
    /// connection can do nothing else), connecting again after failures
    /// (on a cluster, to the next seed node).
    async fn follow_wakes(topology: Topology, channel: String, queued: Arc<Notify>, cancel: CancellationToken) {
        let mut backoff = WAKE_RETRY_MIN;
        for attempt in 0usize.. {
            match topology.pubsub(attempt).await {
                Ok(mut ps) => match ps.subscribe(&channel).await {
                    Ok(()) => {
                        backoff = WAKE_RETRY_MIN;
                        let mut messages = ps.on_message();
                        loop {
                            tokio::select! {
                                () = cancel.cancelled() => return,
                                m = messages.next() => match m {
                                    Some(_) => queued.notify_waiters(),
                                    None => break,
                                },
                            }
                        }
                    }
                    Err(e) => debug!(cause = %e, "integration wakes: cannot subscribe"),
                },
                Err(e) => debug!(cause = %e, "integration wakes: cannot connect"),
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(WAKE_RETRY_MAX),
            }
        }
    }

    async fn run<T: redis::FromRedisValue>(&self, inv: &redis::ScriptInvocation<'_>) -> Result<T> {
        self.run_within(inv, self.timeout).await
    }

    async fn run_within<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
        limit: Duration,
    ) -> Result<T> {
        let mut conn = self.conn.clone();
        within(CALL, limit, inv.invoke_async(&mut conn)).await
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        let mut conn = self.conn.clone();
        within(CALL, self.timeout, cmd.query_async(&mut conn)).await
    }

    async fn exec<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T> {
        let mut conn = self.conn.clone();
        within(CALL, self.timeout, pipe.query_async(&mut conn)).await
    }

    /// `XDEL` of the valid ids among `ids` on `pipe`, if any.
    fn xdel(pipe: &mut redis::Pipeline, queue: &str, ids: impl IntoIterator<Item = impl AsRef<str>>) {
        let ids: Vec<String> = ids.into_iter().filter_map(|i| codec::stream_id(i.as_ref())).collect();
        if !ids.is_empty() {
            pipe.cmd("XDEL").arg(queue).arg(ids).ignore();
        }
    }
}

#[async_trait]
impl IntegrationStore for RedisIntegrations {
    async fn rules(&self) -> Result<(u64, Vec<Rule>)> {
        let p = &self.prefix;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("GET")
            .arg(keys::int_version(p))
            .cmd("HVALS")
            .arg(keys::int_rules(p));
        let (version, raw): (Option<u64>, Vec<Vec<u8>>) = self.exec(&pipe).await?;
        let mut rules = raw
            .iter()
            .map(|r| codec::from_json::<Rule>("integration rule", r))
            .collect::<Result<Vec<_>>>()?;
        rules.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((version.unwrap_or(0), rules))
    }

    async fn put_rule(&self, rule: &Rule, create: bool) -> Result<()> {
        let p = &self.prefix;
        let mut inv = PUT_RULE.prepare_invoke();
        inv.key(keys::int_rules(p))
            .key(keys::int_version(p))
            .arg(&rule.id)
            .arg(codec::to_json(rule)?)
            .arg(if create { "1" } else { "0" })
            .arg(limits::MAX_RULES);
        let outcome: String = self.run(&inv).await?;
        match outcome.as_str() {
            "ok" => Ok(()),
            "full" => Err(Error::ResourceExhausted(format!(
                "at most {} integration rules",
                limits::MAX_RULES
            ))),
            "missing" => Err(Error::NotFound(format!("integration rule {:?}", rule.id))),
            other => Err(Error::Internal(format!("unexpected put_rule reply {other:?}"))),
        }
    }

    async fn delete_rule(&self, id: &str) -> Result<bool> {
        let p = &self.prefix;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HDEL")
            .arg(keys::int_rules(p))
            .arg(id)
            .cmd("DEL")
            .arg(keys::int_queue(p, id))
            .arg(keys::int_staged(p, id))
            .arg(keys::int_dead(p, id))
            .arg(keys::int_lease(p, id))
            .ignore()
            .cmd("INCR")
            .arg(keys::int_version(p))
            .ignore();
        let (removed,): (u64,) = self.exec(&pipe).await?;
        Ok(removed > 0)
    }

    async fn enqueue(&self, version: u64, shard: u32, rules: &[RuleRef], events: &[SourceEvent]) -> Result<Enqueued> {
        let p = &self.prefix;
        let mut inv = ENQUEUE.prepare_invoke();
        inv.key(keys::int_version(p))
            .key(keys::int_high_water(p))
            .key(keys::int_last(p));
        for r in rules {
            inv.key(keys::int_queue(p, &r.id));
        }
        inv.arg(version).arg(shard);
        codec::enqueue_args(&mut inv, rules, events);
        // a large call is one long script: allow for it on top of the
        // timeout, per change and per rule covering it (as the apply calls
        // do per operation)
        let work: usize = events.iter().map(|e| 1 + e.rules.len()).sum();
        let limit = self.timeout + BATCH_ALLOWANCE_PER_OP * u32::try_from(work).unwrap_or(u32::MAX);
        let appended: i64 = self.run_within(&inv, limit).await?;
        if appended > 0 {
            // wakes every replica's workers; they poll anyway, so a lost
            // wake only costs latency
            let mut publish = redis::cmd("PUBLISH");
            publish.arg(keys::int_wake(p)).arg("");
            if let Err(e) = self.query::<i64>(&publish).await {
                debug!(cause = %e, "integration wakes: cannot publish");
            }
        }
        Ok(match usize::try_from(appended) {
            Ok(entries) => Enqueued::Done { entries },
            Err(_) => Enqueued::Stale,
        })
    }

    async fn lease(&self, rule: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let mut inv = LEASE.prepare_invoke();
        // PX takes at least 1 ms; a zero lease is expired at once anyway
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        inv.key(keys::int_lease(&self.prefix, rule)).arg(holder).arg(ms);
        let held: i64 = self.run(&inv).await?;
        Ok(held == 1)
    }

    async fn release(&self, rule: &str, holder: &str) -> Result<()> {
        let mut inv = RELEASE.prepare_invoke();
        inv.key(keys::int_lease(&self.prefix, rule)).arg(holder);
        let _released: i64 = self.run(&inv).await?;
        Ok(())
    }

    async fn read(&self, rule: &str, after: Option<&str>, limit: usize) -> Result<Vec<Entry>> {
        // as the memory store: an `after` that is no position reads from
        // the start; and the last possible position has nothing after it
        // (Redis refuses an exclusive start there)
        let start = match after.and_then(crate::domain::Pos::parse) {
            None => "-".to_string(),
            Some(p) if p.ms == u64::MAX && p.seq == u64::MAX => return Ok(Vec::new()),
            Some(p) => format!("({p}"),
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(keys::int_queue(&self.prefix, rule))
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(limit);
        codec::entries(self.query(&cmd).await?)
    }

    async fn stage(&self, rule: &str, batch: &Staged) -> Result<()> {
        let p = &self.prefix;
        let mut inv = STAGE.prepare_invoke();
        inv.key(keys::int_rules(p))
            .key(keys::int_staged(p, rule))
            .arg(rule)
            .arg(&batch.id)
            .arg(codec::to_json(batch)?);
        let _staged: i64 = self.run(&inv).await?;
        Ok(())
    }

    async fn staged(&self, rule: &str) -> Result<Vec<Staged>> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(keys::int_staged(&self.prefix, rule));
        let mut raw: Vec<(String, Vec<u8>)> = self.query(&cmd).await?;
        // the memory store's order: by batch id, then (stably) by the
        // first entry's position
        raw.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = raw
            .iter()
            .map(|(_, b)| codec::from_json::<Staged>("staged batch", b))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|b| b.entries.first().map(Entry::pos));
        Ok(out)
    }

    async fn complete(&self, rule: &str, batch: &Staged, front: bool) -> Result<()> {
        let p = &self.prefix;
        let mut pipe = redis::pipe();
        pipe.atomic();
        let last = batch
            .entries
            .iter()
            .filter_map(|e| crate::domain::Pos::parse(&e.id))
            .max();
        match (front, last) {
            // everything before the batch's end is gone or in the batch:
            // one trim instead of an XDEL per entry, each of which walks
            // the stream's radix tree and rewrites a listpack
            (true, Some(last)) => {
                let after = crate::domain::Pos {
                    ms: last.ms,
                    seq: last.seq.saturating_add(1),
                };
                pipe.cmd("XTRIM")
                    .arg(keys::int_queue(p, rule))
                    .arg("MINID")
                    .arg(after.to_string())
                    .ignore();
            }
            _ => Self::xdel(
                &mut pipe,
                &keys::int_queue(p, rule),
                batch.entries.iter().map(|e| &e.id),
            ),
        }
        pipe.cmd("HDEL").arg(keys::int_staged(p, rule)).arg(&batch.id).ignore();
        let () = self.exec(&pipe).await?;
        Ok(())
    }

    async fn discard(&self, rule: &str, entry_ids: &[String]) -> Result<()> {
        let mut pipe = redis::pipe();
        Self::xdel(&mut pipe, &keys::int_queue(&self.prefix, rule), entry_ids);
        if pipe.is_empty() {
            return Ok(());
        }
        let () = self.exec(&pipe).await?;
        Ok(())
    }

    async fn kill(&self, rule: &str, dead: &DeadLetter) -> Result<()> {
        let p = &self.prefix;
        let mut inv = KILL.prepare_invoke();
        inv.key(keys::int_rules(p))
            .key(keys::int_queue(p, rule))
            .key(keys::int_staged(p, rule))
            .key(keys::int_dead(p, rule))
            .arg(rule)
            .arg(&dead.batch.id)
            .arg(codec::to_json(dead)?)
            .arg(limits::MAX_DEAD_LETTERS);
        for e in &dead.batch.entries {
            if let Some(id) = codec::stream_id(&e.id) {
                inv.arg(id);
            }
        }
        let _killed: i64 = self.run(&inv).await?;
        Ok(())
    }

    async fn dead_letters(&self, rule: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let last = isize::try_from(limit).map_or(-1, |l| l - 1);
        let mut cmd = redis::cmd("LRANGE");
        cmd.arg(keys::int_dead(&self.prefix, rule)).arg(0).arg(last);
        let raw: Vec<Vec<u8>> = self.query(&cmd).await?;
        raw.iter()
            .map(|d| codec::from_json::<DeadLetter>("dead letter", d))
            .collect()
    }

    async fn replay(&self, rule: &str, batch_ids: &[String]) -> Result<u64> {
        let p = &self.prefix;
        let mut inv = REPLAY.prepare_invoke();
        inv.key(keys::int_dead(p, rule)).key(keys::int_queue(p, rule));
        for id in batch_ids {
            inv.arg(id);
        }
        self.run(&inv).await
    }

    async fn backlog(&self, rule: &str) -> Result<u64> {
        let mut cmd = redis::cmd("XLEN");
        cmd.arg(keys::int_queue(&self.prefix, rule));
        self.query(&cmd).await
    }

    fn watch(&self, queued: Arc<Notify>, cancel: CancellationToken) {
        tokio::spawn(Self::follow_wakes(
            self.topology.clone(),
            keys::int_wake(&self.prefix),
            queued,
            cancel,
        ));
    }
}
