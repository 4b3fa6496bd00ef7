//! Event stream readers: one task per stream shard, each on its own
//! connection (a blocking XREAD would stall a shared multiplexed one),
//! feeding every committed change to the replica's [`ChangeSink`].
//!
//! When Redis goes away a reader retries with backoff. When it is back,
//! the reader continues where it stopped if the stream still holds that
//! position; if the stream was lost (Redis restarted empty) or trimmed
//! past it, the reader starts at the stream's end and asks the sink to
//! resync, so subscribers take fresh snapshots instead of missing changes.
//!
//! While the replica holds no subscription, a reader pauses (no XREAD at
//! all) and, once one arrives, goes on from the log's end; see
//! [`crate::store::Demand`] for why that stays exact.

use std::sync::Arc;
use std::time::Duration;

use redis::streams::StreamReadReply;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::codec::{parse_metrics, StreamState, PACKED_METRICS_LEN};
use super::conn::{Conn, Topology};
use super::functions::{self, Function};
use super::{keys, RedisConfig};
use crate::domain::{ChangeEvent, ChannelName, Pos};
use crate::store::outage::OutageLog;
use crate::store::ChangeSink;

/// How long one XREAD blocks.
const BLOCK: Duration = Duration::from_millis(1000);
/// Entries one XREAD returns at most.
const BATCH: usize = 1024;
/// Longest wait between reconnection attempts: short, so subscribers are
/// brought up to date soon after Redis returns.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often a reader checks that the stream it follows was not lost.
const VERIFY_EVERY: Duration = Duration::from_secs(1);

/// Reads shard `shard` until `cancel`.
pub(super) async fn run(
    topology: Topology,
    cfg: RedisConfig,
    shard: u32,
    sink: Arc<dyn ChangeSink>,
    cancel: CancellationToken,
    outage: Arc<OutageLog>,
) {
    let key = keys::events(&cfg.key_prefix, shard);
    // the shard as the sink numbers it (a partition's number): what the
    // demand marks, the outage log, metrics and log lines name
    let id = sink.shard_of(shard);
    let mut last: Option<Pos> = None;
    let mut backoff = Duration::from_millis(100);
    let mut failing = false;
    while !cancel.is_cancelled() {
        let attempt = async {
            let mut conn = topology.dedicated(cfg.timeout, BLOCK + cfg.timeout).await?;
            let (exists, last_generated, max_deleted) = stream_state(&mut conn, &cfg, shard).await?;
            Ok::<_, redis::RedisError>((conn, exists == 1, last_generated, max_deleted))
        };
        let (mut conn, exists, last_generated, max_deleted) = match tokio::time::timeout(cfg.timeout * 2, attempt).await
        {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                failing = backoff_wait(&cancel, &mut backoff, &outage, id, &e.to_string(), failing).await;
                continue;
            }
            Err(_) => {
                failing = backoff_wait(&cancel, &mut backoff, &outage, id, "timed out", failing).await;
                continue;
            }
        };
        let last_generated = Pos::parse(&last_generated).unwrap_or_default();
        let max_deleted = Pos::parse(&max_deleted).unwrap_or_default();
        let start_over = match last {
            None => true,
            Some(l) if l == Pos::ZERO => false,
            Some(_) if !exists => true,
            Some(l) if last_generated < l || max_deleted >= l => true,
            Some(l) => match entry_exists(&mut conn, &key, l).await {
                Ok(found) => !found,
                Err(e) => {
                    failing = backoff_wait(&cancel, &mut backoff, &outage, id, &e.to_string(), failing).await;
                    continue;
                }
            },
        };
        let (start, resync) = if start_over {
            (if exists { last_generated } else { Pos::ZERO }, true)
        } else {
            (last.unwrap_or_default(), false)
        };
        if failing {
            debug!(shard = id, "event stream reader reconnected");
            outage.recovered(id);
        }
        backoff = Duration::from_millis(100);
        last = Some(start);
        if resync {
            sink.resync();
        }
        let mut pos = start;
        let mut verified = tokio::time::Instant::now();
        loop {
            // nobody on this replica listens: stop reading until someone
            // does, then go on from the log's end (see `Demand`)
            if let Some(demand) = sink.demand().filter(|d| d.pause(id)) {
                debug!(shard = id, "no subscription, event stream reader paused");
                tokio::select! {
                    () = cancel.cancelled() => {
                        demand.resume(id);
                        return;
                    }
                    () = demand.wanted() => {}
                }
                let state = tokio::time::timeout(cfg.timeout * 2, stream_state(&mut conn, &cfg, shard)).await;
                demand.resume(id);
                match state {
                    Ok(Ok((exists, last_generated, _))) => {
                        pos = if exists == 1 {
                            Pos::parse(&last_generated).unwrap_or_default()
                        } else {
                            Pos::ZERO
                        };
                        last = Some(pos);
                        verified = tokio::time::Instant::now();
                        debug!(shard = id, "event stream reader resumed");
                    }
                    failed => {
                        // the listeners went on: starting over from
                        // nothing makes the reconnection resync them
                        last = None;
                        let cause = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => "timed out".to_string(),
                        };
                        failing = backoff_wait(&cancel, &mut backoff, &outage, id, &cause, false).await;
                        break;
                    }
                }
            }
            // Redis may lose its data without dropping the connection (a
            // flush, a failover to an empty replica): once a second, check
            // that the last entry read is still there.
            if pos != Pos::ZERO && verified.elapsed() >= VERIFY_EVERY {
                verified = tokio::time::Instant::now();
                match entry_exists(&mut conn, &key, pos).await {
                    Ok(true) => {}
                    Ok(false) => {
                        warn!(shard = id, "event stream lost or trimmed past this reader, resyncing");
                        break;
                    }
                    Err(e) => {
                        failing = backoff_wait(&cancel, &mut backoff, &outage, id, &e.to_string(), false).await;
                        break;
                    }
                }
            }
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(BATCH)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&key)
                .arg(pos.to_string());
            let read = cmd.query_async::<Option<StreamReadReply>>(&mut conn);
            let reply = tokio::select! {
                () = cancel.cancelled() => return,
                r = read => r,
            };
            match reply {
                Ok(Some(reply)) => {
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    for k in reply.keys {
                        for entry in k.ids {
                            let Some(p) = Pos::parse(&entry.id) else { continue };
                            pos = p;
                            // the entry's id is the Redis clock at commit
                            crate::telemetry::store().event_lag(id, Duration::from_millis(now_ms.saturating_sub(p.ms)));
                            for e in decode(shard, p, &entry.map) {
                                sink.publish(e);
                            }
                        }
                    }
                    last = Some(pos);
                }
                Ok(None) => {}
                Err(e) => {
                    failing = backoff_wait(&cancel, &mut backoff, &outage, id, &e.to_string(), false).await;
                    break;
                }
            }
        }
    }
}

/// Whether shard `shard`'s stream exists, its last generated id and its
/// largest deleted id.
async fn stream_state(conn: &mut Conn, cfg: &RedisConfig, shard: u32) -> redis::RedisResult<StreamState> {
    let mut inv = functions::call(cfg, Function::StreamState);
    inv.arg(shard);
    functions::invoke(conn, &inv).await
}

async fn entry_exists(conn: &mut Conn, key: &str, pos: Pos) -> redis::RedisResult<bool> {
    let id = pos.to_string();
    let found: Vec<redis::Value> = redis::cmd("XRANGE")
        .arg(key)
        .arg(&id)
        .arg(&id)
        .query_async(conn)
        .await?;
    Ok(!found.is_empty())
}

/// The changes of one stream entry: one write's changed channels of this
/// shard (field: the channel, value: its counters). Every change but the
/// last covers the log only up to just before the entry, so that the hub's
/// watermark reaches the entry once all of its changes are dispatched.
fn decode(shard: u32, pos: Pos, map: &std::collections::HashMap<String, redis::Value>) -> Vec<ChangeEvent> {
    let mut out = Vec::with_capacity(map.len());
    for (name, value) in map {
        let channel = match ChannelName::parse("channel", name.as_str()) {
            Ok(c) => c,
            Err(e) => {
                warn!(cause = %e, "skipping event with an invalid channel");
                continue;
            }
        };
        let bytes = match redis::from_redis_value_ref::<Vec<u8>>(value) {
            Ok(b) if b.len() == PACKED_METRICS_LEN => b,
            _ => {
                warn!(%channel, "skipping event with malformed counters");
                continue;
            }
        };
        out.push(ChangeEvent {
            shard,
            pos,
            covers: pos.pred(),
            channel,
            metrics: parse_metrics(&bytes),
            timestamp_ms: i64::try_from(pos.ms).unwrap_or(i64::MAX),
        });
    }
    if let Some(last) = out.last_mut() {
        last.covers = pos;
    }
    out
}

/// Waits before the next attempt (doubling up to 1 s); returns that the
/// reader is now failing. The replica's readers share `outage`, so an
/// outage is logged once for all shards, not once per shard.
async fn backoff_wait(
    cancel: &CancellationToken,
    backoff: &mut Duration,
    outage: &OutageLog,
    shard: u32,
    cause: &str,
    already_failing: bool,
) -> bool {
    if !already_failing {
        debug!(shard, %cause, "event stream reader lost redis, retrying");
    }
    outage.failed(shard, &cause);
    tokio::select! {
        () = cancel.cancelled() => {}
        () = tokio::time::sleep(*backoff) => {}
    }
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Metrics;

    fn entry(pairs: &[(&str, [u32; 9])]) -> std::collections::HashMap<String, redis::Value> {
        pairs
            .iter()
            .map(|(k, m)| {
                let packed = m.iter().flat_map(|v| v.to_le_bytes()).collect();
                (k.to_string(), redis::Value::BulkString(packed))
            })
            .collect()
    }

    #[test]
    fn an_entry_yields_one_change_per_channel_and_covers_itself_only_at_its_last() {
        let pos = Pos { ms: 7, seq: 3 };
        let events = decode(
            2,
            pos,
            &entry(&[
                ("a", [1, 0, 1, 0, 0, 0, 0, 0, 0]),
                ("b", [2, 1, 0, 0, 0, 0, 0, 0, 70_000]),
                ("c", [0; 9]),
            ]),
        );
        assert_eq!(events.len(), 3);
        let mut names: Vec<&str> = events.iter().map(|e| e.channel.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["a", "b", "c"]);
        for (i, e) in events.iter().enumerate() {
            assert_eq!((e.shard, e.pos, e.timestamp_ms), (2, pos, 7));
            let want = if i + 1 == events.len() { pos } else { pos.pred() };
            assert_eq!(e.covers, want, "event {i}");
            let expected = match e.channel.as_str() {
                "a" => [1, 0, 1, 0, 0, 0, 0, 0, 0],
                "b" => [2, 1, 0, 0, 0, 0, 0, 0, 70_000],
                _ => [0; 9],
            };
            assert_eq!(e.metrics, Metrics::from_array(expected));
        }
    }

    #[test]
    fn bad_fields_are_skipped_not_fatal() {
        let pos = Pos { ms: 1, seq: 0 };
        let mut map = entry(&[("ok", [1, 0, 0, 0, 0, 0, 0, 0, 0])]);
        map.insert("bad\u{1}name".into(), redis::Value::BulkString(b"1".to_vec()));
        map.insert("no-text".into(), redis::Value::Nil);
        map.insert("short".into(), redis::Value::BulkString(b"1,0,0,0,0,0,0,0,0".to_vec()));
        let events = decode(0, pos, &map);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].channel.as_str(), "ok");
        assert_eq!(events[0].covers, pos);
    }
}
