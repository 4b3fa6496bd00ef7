//! Writes acknowledged by replicas before they are answered.
//!
//! Redis replicates asynchronously: a primary that dies right after a
//! write can be replaced by a replica that never got it, and a front end
//! told "done" would never re-send it. With `replica_acks` set, a write
//! (and a CloseSession) is followed, in the same round trip to the same
//! node, by `WAIT n timeout`, and answered as done only once `n` replicas
//! have it; otherwise it answers UNAVAILABLE, and the front end retries
//! (finding it applied if it survived) or re-syncs, as after any failed
//! write.
//!
//! `n` is the configured count capped by the replicas the primary has
//! connected, as the last health check saw them (`ROLE`), or as the last
//! write that found fewer did (until the next health check): a primary with
//! no replica cannot be failed over to one (after a failover the promoted
//! replica has none until another attaches), so waiting for one would
//! only refuse every write. Losing such a primary loses its whole state,
//! which the service detects as it detects a Redis that restarted empty.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::FromRedisValue;

use super::failure::within;
use super::functions::{invoke, invoke_acked};
use crate::error::{Error, Result};

/// How many replicas must acknowledge a write.
#[derive(Debug, Clone)]
pub(super) struct Replication {
    /// The configured count (0: none, no WAIT).
    wanted: u32,
    /// Replicas the primary had connected at the last health check.
    connected: Arc<AtomicU32>,
}

impl Replication {
    /// `wanted` acknowledgements; until a health check says otherwise,
    /// the primary is taken to have that many replicas.
    pub(super) fn new(wanted: u32) -> Self {
        Self {
            wanted,
            connected: Arc::new(AtomicU32::new(wanted)),
        }
    }

    /// Whether writes wait for replicas at all (the health check then
    /// reads the primary's replicas).
    pub(super) fn enabled(&self) -> bool {
        self.wanted > 0
    }

    /// Records the replicas the primary has connected.
    pub(super) fn observe(&self, connected: u32) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    /// Acknowledgements a write needs now.
    fn needed(&self) -> u32 {
        self.wanted.min(self.connected.load(Ordering::Relaxed))
    }

    /// Runs the function call `cmd` of kind `call` within `limit`, then
    /// waits for the acknowledgements it needs, as long again at most (a
    /// large batch replicates as many commands as it ran).
    ///
    /// # Errors
    /// As the call; [`Error::Unavailable`] when too few replicas
    /// acknowledged it in time.
    pub(super) async fn run<T: FromRedisValue>(
        &self,
        call: &'static str,
        limit: Duration,
        conn: &mut impl ConnectionLike,
        cmd: &redis::Cmd,
    ) -> Result<T> {
        let needed = self.needed();
        if needed == 0 {
            return within(call, limit, invoke(conn, cmd)).await;
        }
        let (reply, acked): (T, u32) = within(call, limit * 2, invoke_acked(conn, cmd, needed, limit)).await?;
        if acked >= needed {
            return Ok(reply);
        }
        // Fewer replicas answered than the last health check saw: most
        // likely the primary lost them (a replica promoted after a
        // failover has none). Every WAIT blocks its connection, shared by
        // all calls to that node, for its whole timeout, so waiting on for
        // replicas that are gone would stall every call behind it, health
        // checks included; wait for those that answered until the next
        // health check counts them again.
        self.observe(acked);
        Err(Error::Unavailable(format!(
            "the write ran on the Redis primary but {acked} of the {needed} replicas it needs acknowledged it \
             within {limit:?} (--redis-replica-acks): a failover could lose it"
        )))
    }
}

/// The number of replicas a `ROLE` reply lists (0 for a replica's or an
/// unexpected reply).
pub(super) fn connected_replicas(role: &redis::Value) -> u32 {
    let redis::Value::Array(parts) = role else { return 0 };
    match (parts.first(), parts.get(2)) {
        (Some(redis::Value::BulkString(kind)), Some(redis::Value::Array(replicas))) if kind == b"master" => {
            u32::try_from(replicas.len()).unwrap_or(u32::MAX)
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    #[test]
    fn role_replies_give_the_connected_replicas() {
        let replica = |port: &str| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::BulkString(port.as_bytes().to_vec()),
                Value::BulkString(b"100".to_vec()),
            ])
        };
        let master = |n: usize| {
            Value::Array(vec![
                Value::BulkString(b"master".to_vec()),
                Value::Int(100),
                Value::Array((0..n).map(|i| replica(&format!("{}", 7000 + i))).collect()),
            ])
        };
        assert_eq!(connected_replicas(&master(0)), 0);
        assert_eq!(connected_replicas(&master(2)), 2);
        let slave = Value::Array(vec![
            Value::BulkString(b"slave".to_vec()),
            Value::BulkString(b"127.0.0.1".to_vec()),
            Value::Int(7000),
            Value::BulkString(b"connected".to_vec()),
            Value::Int(100),
        ]);
        assert_eq!(connected_replicas(&slave), 0);
        assert_eq!(connected_replicas(&Value::Nil), 0);
    }

    #[test]
    fn writes_need_the_wanted_count_capped_by_the_connected_replicas() {
        let r = Replication::new(1);
        assert!(r.enabled());
        assert_eq!(r.needed(), 1, "until a health check, the configured count");
        r.observe(0);
        assert_eq!(r.needed(), 0, "a primary without replicas: nothing to wait for");
        r.observe(3);
        assert_eq!(r.needed(), 1);
        let off = Replication::new(0);
        off.observe(3);
        assert!(!off.enabled());
        assert_eq!(off.needed(), 0);
    }
}
