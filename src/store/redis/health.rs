//! The health check of a Redis store (`Store::ping`): Redis answers,
//! holds this version's function library, and lays out the state as this
//! replica does (the partition and event shard counts recorded in Redis);
//! what it finds about the layout opens or shuts the store's gate
//! (`layout.rs`).

use std::time::Duration;

use super::conn::Conn;
use super::functions::{self, invoke, Function};
use super::{keys, replication, RedisStore};
use crate::error::{Error, Result};

/// How long the event shard count recorded in Redis outlives the last
/// health check that kept it (see `RedisStore::check_event_shards`).
pub const EVENT_SHARDS_RECORD: Duration = Duration::from_secs(30);

impl RedisStore {
    /// The health check behind `Store::ping`: Redis answers, and it also
    /// makes sure Redis holds this version's function library, so a
    /// replica has it before it reports SERVING, and gets it back within a
    /// health interval when Redis lost it; and that every replica sharing
    /// this Redis uses the same number of event shards
    /// (`RedisStore::check_event_shards`). On a cluster it asks only the
    /// primary serving the state's slot (PING would go to every primary):
    /// a function call there loads the library on every primary if that one
    /// lacks it (a primary that took the slot over by resharding). With
    /// `replica_acks`, it also reads how many replicas that primary has
    /// (`replication.rs`).
    pub(super) async fn health_check(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        if self.cfg.cluster {
            // the anchor every call declares (`keys::anchor`); created
            // before any other key of the state, by the first health check
            let _created: Option<String> = self
                .bounded(
                    "health",
                    redis::cmd("SET")
                        .arg(keys::anchor(&self.cfg.key_prefix))
                        .arg(1)
                        .arg("NX")
                        .query_async(&mut conn),
                )
                .await?;
            let mut inv = self.call(Function::StreamState);
            inv.arg(0);
            let _state: redis::Value = self.bounded("health", invoke(&mut conn, &inv)).await?;
        } else {
            let pong: String = self
                .bounded("health", redis::cmd("PING").query_async(&mut conn))
                .await?;
            if pong != "PONG" {
                return Err(Error::Internal(format!("unexpected PING reply {pong}")));
            }
            self.bounded("health", functions::ensure_loaded(&mut conn)).await?;
        }
        if self.replication.enabled() {
            // ROLE of the node serving the state: the pipeline goes where
            // its keyed first command routes it
            let mut pipe = redis::pipe();
            pipe.cmd("EXISTS")
                .arg(keys::anchor(&self.cfg.key_prefix))
                .ignore()
                .cmd("ROLE");
            let (role,): (redis::Value,) = self.bounded("health", pipe.query_async(&mut conn)).await?;
            self.replication.observe(replication::connected_replicas(&role));
        }
        let layout = match &self.partitions_record {
            Some(key) => self.check_partitions(&mut conn, key).await,
            None => Ok(()),
        };
        let layout = match layout {
            Ok(()) => self.check_event_shards(&mut conn).await,
            refused => refused,
        };
        let partition = self.node_writes.as_ref().map_or(0, |(_, p)| *p);
        self.gate.observe(partition, &layout);
        layout
    }

    /// Fails when another replica sharing this Redis writes its events
    /// to a different number of shards.
    ///
    /// A write appends its events to the shards of its own configuration
    /// and a replica reads those of its own, so replicas that disagree
    /// lose each other's events, silently. The first health check records
    /// the count (`keys::event_shards`), each matching one keeps the record
    /// alive, and a replica with another count reports NOT_SERVING with
    /// this error until the record expires, [`EVENT_SHARDS_RECORD`] after
    /// the last replica of the old count stopped.
    async fn check_event_shards(&self, conn: &mut Conn) -> Result<()> {
        let key = keys::event_shards(&self.cfg.key_prefix);
        let ttl = EVENT_SHARDS_RECORD.as_millis() as u64;
        let mine = self.cfg.event_shards;
        let recorded: Option<u32> = self
            .bounded(
                "health",
                redis::cmd("SET")
                    .arg(&key)
                    .arg(mine)
                    .arg("NX")
                    .arg("GET")
                    .arg("PX")
                    .arg(ttl)
                    .query_async(conn),
            )
            .await?;
        match recorded {
            None => Ok(()),
            Some(n) if n == mine => {
                let _kept: bool = self
                    .bounded("health", redis::cmd("PEXPIRE").arg(&key).arg(ttl).query_async(conn))
                    .await?;
                Ok(())
            }
            Some(n) => Err(Error::FailedPrecondition(format!(
                "this replica writes and reads {mine} event shards, but another replica sharing this Redis uses {n}: \
                 every replica must use the same --event-shards (the record `{key}` expires {}s after the last \
                 replica using {n} stopped)",
                EVENT_SHARDS_RECORD.as_secs()
            ))),
        }
    }

    /// Fails when the partition count recorded in Redis is not this
    /// replica's: a channel's keys are where its partition puts them, so a
    /// replica with another count would read and write channels where the
    /// others do not. The first replica records it, for good: changing it
    /// means starting from an empty state (another key prefix).
    async fn check_partitions(&self, conn: &mut Conn, key: &str) -> Result<()> {
        let mine = self.cfg.partitions.max(1);
        let recorded: Option<u32> = self
            .bounded(
                "health",
                redis::cmd("SET")
                    .arg(key)
                    .arg(mine)
                    .arg("NX")
                    .arg("GET")
                    .query_async(conn),
            )
            .await?;
        match recorded {
            Some(n) if n != mine => Err(Error::FailedPrecondition(format!(
                "this replica splits the state into {mine} partitions, but the state in this Redis was laid out in \
                 {n} (recorded in `{key}`): every replica must use --partitions {n}; another count needs an empty \
                 state (another --key-prefix)"
            ))),
            _ => Ok(()),
        }
    }
}
