//! Every Redis key the service uses, built in one place. The Lua code
//! (`lua/keys.lua`) builds the same names; `tests/it/redis_store.rs`
//! (`scripts_and_keys_rs_agree_on_the_layout`) checks that the two agree.
//! The integration scripts (`lua/integrations/`) build none: they get
//! every key from here as `KEYS`.
//!
//! Layout under the configurable prefix `P`:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:{ch:NAME}:m` | string | the channel's counters (`c,pub,sub,pc,pm,ps,op,os,pcl`), each an unsigned 32-bit little-endian integer: 36 bytes; absent when no connection is attached |
//! | `P:{ch:NAME}:cl` | hash | client id → presence members of that client |
//! | `P:idx:name` | sorted set, score 0 | names of active channels (lexical walk) |
//! | `P:idx:busy` | sorted set, score 0 | [`busy_key`](crate::domain::list::busy_key)s of active channels |
//! | `P:conns` | hash | connection id → its record: owning token and attachment count (`TOK\tN`), then per attachment `\nCHANNEL\tMODES` and `\tCLIENT` per presence member |
//! | `P:tok:T:conns` | set | connections owned by token `T` |
//! | `P:sess:ID` | string | the session's current token |
//! | `P:tok:T` | hash | `s` → session id, `ttl` → lease ms, `q` → last batch sequence applied in the lease |
//! | `P:leases` | sorted set | token → lease deadline (ms, Redis clock); its size is the number of open sessions |
//! | `P:totals` | hash | `c` → the sum of every channel's connections, `pm` → of its presence members; changed by every function call that changes a channel, in the same atomic call |
//! | `P:reaping` | set | retired tokens whose connections are still being removed |
//! | `P:{ev:N}` | stream | events of shard `N`: one entry per write, field the changed channel, value its counters |
//! | `P:anchor` | string | `1`, on a Redis Cluster only: the key every function call declares, so the call is routed to the node holding the state (see [`anchor`]) |
//! | `P:probe` | none | never written: on a Redis Cluster every function call checks it is missing, which fails while the state's slot migrates, and answers TRYAGAIN before changing anything (see [`probe`]) |
//! | `P:partitions` | string | the number of partitions the state is split into, recorded by the first replica (never under a partition's hash tag) |
//! | `P:event-shards` | string, expires | the number of event shards the replicas use, kept by their health checks |
//! | `P:int:rules` | hash | integration rule id → the rule (JSON) |
//! | `P:int:ver` | string | the rules' version: incremented by every put and delete of a rule (absent: 0) |
//! | `P:int:hw` | hash | event shard → the position (`ms-seq`) of the last change enqueued from it |
//! | `P:int:last` | hash | channel → its metrics after the last change enqueued (`c,pub,sub,pc,pm,ps,op,os,pcl` in decimal); absent when no connection is attached |
//! | `P:int:q:RULE` | stream | the rule's queued entries, fields `c` channel, `k` kind code, `f` flip (`0`/`1`), `m` metrics (as in `P:int:last`), `t` commit time ms; the stream id is the entry id |
//! | `P:int:st:RULE` | hash | the rule's staged batches: batch id → batch (JSON) |
//! | `P:int:dl:RULE` | list | the rule's dead letters (JSON), oldest first, at most `integrations::limits::MAX_DEAD_LETTERS` |
//! | `P:int:lease:RULE` | string, expires | the holder of the rule's delivery lease |
//!
//! A connection costs one field in `P:conns` and one member of its token's
//! set, no key of its own: that keeps Redis' memory per attachment low and
//! lets a script read and write all connections of a batch with one HMGET
//! and one HSET. (`P:conns` is one big hash on purpose: a small hash is a
//! listpack that Redis searches linearly, up to `hash-max-listpack-entries`
//! fields, which made per-token hashes of a few hundred connections slow.)
//!
//! A session id maps to a fresh token each time its lease is opened, so the
//! remains of an expired lease can be reaped while the same session id is
//! already writing again. A token is a random 64-bit number (in decimal)
//! picked by the replica, and is also the lease's epoch that answers
//! carry: unlike a counter kept in Redis, it does not start again when
//! Redis loses its data.
//!
//! All keys of one channel share the hash tag `{ch:NAME}`. Scripts also
//! touch the session and index keys, so one call spans several slots: on
//! one Redis that is allowed. With the state split into partitions
//! ([`crate::store::partitioned`]), each partition is one such layout
//! under the prefix `P:{TAG}` with its own tag ([`partition_tag`]), and
//! only `P:partitions` stays outside every partition. On a Redis Cluster
//! ([`RedisConfig::cluster`](super::RedisConfig::cluster)), or with a hash
//! tag in the configuration
//! ([`RedisConfig::hash_tag`](super::RedisConfig::hash_tag)), the prefix
//! becomes `P:{TAG}` ([`tagged`]): the first braces of a key decide its
//! slot, so every key above, and every key a script builds from the
//! prefix, lands in the tag's one slot (`tests/it/cluster.rs` checks that
//! no key of the service lands anywhere else), and `P:anchor` routes each
//! function call there ([`anchor`]).

/// Validates a key prefix: non-empty, no braces (they would change hash
/// tags), no white space or control characters.
///
/// # Errors
/// A message saying what is wrong.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > 64 {
        return Err("key prefix must be 1 to 64 bytes".into());
    }
    if prefix
        .chars()
        .any(|c| c == '{' || c == '}' || c.is_whitespace() || c.is_control())
    {
        return Err("key prefix must not contain braces, white space or control characters".into());
    }
    Ok(())
}

/// Slots of a Redis Cluster.
pub const CLUSTER_SLOTS: u16 = 16_384;

/// The Redis Cluster slot of a hash tag (CRC16/XMODEM of the tag modulo
/// [`CLUSTER_SLOTS`], as the cluster computes it for `{TAG}`).
pub fn tag_slot(tag: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % CLUSTER_SLOTS
}

/// The slots partition `p` of `partitions` takes its tag from: the middle
/// half of the `p`-th of `partitions` equal ranges of slots, so that a
/// cluster whose primaries split the slots in equal ranges, rounded either
/// way, serves it from the `p`-th primary's range.
pub fn partition_slots(p: u32, partitions: u32) -> (u64, u64) {
    let n = u64::from(partitions.max(1));
    let lo = u64::from(p) * u64::from(CLUSTER_SLOTS) / n;
    let hi = (u64::from(p) + 1) * u64::from(CLUSTER_SLOTS) / n;
    let quarter = (hi - lo) / 4;
    (lo + quarter, hi - quarter)
}

/// The hash tag of partition `p` of `partitions`: `p:P.K`, the first `K`
/// whose slot lies in [`partition_slots`].
/// `redis-cli --cluster create` gives each primary one contiguous range
/// of equal size, so the partitions of a new cluster spread evenly over
/// its primaries without resharding (plain `p:N` tags cluster by chance:
/// 16 of them put 10 on one of three primaries).
pub fn partition_tag(p: u32, partitions: u32) -> String {
    let (lo, hi) = partition_slots(p, partitions);
    // each try lands in the range with probability 1/(2n): a few n tries
    (0u32..)
        .map(|k| format!("p:{p}.{k}"))
        .find(|tag| (lo..hi).contains(&u64::from(tag_slot(tag))))
        .expect("an unbounded search over tags ends")
}

/// The Redis Cluster slot of every key under `prefix`: its hash tag's
/// (the text inside its first braces, when not empty), else the
/// prefix's own.
pub fn prefix_slot(prefix: &str) -> u16 {
    let tag = prefix
        .find('{')
        .and_then(|open| {
            let rest = &prefix[open + 1..];
            rest.find('}').filter(|&close| close > 0).map(|close| &rest[..close])
        })
        .unwrap_or(prefix);
    tag_slot(tag)
}

/// The prefix whose keys all hash to `tag`'s slot: `PREFIX:{TAG}`.
pub fn tagged(prefix: &str, tag: &str) -> String {
    format!("{prefix}:{{{tag}}}")
}

/// The channel's counters.
pub fn channel_metrics(prefix: &str, channel: &str) -> String {
    format!("{prefix}:{{ch:{channel}}}:m")
}

/// The channel's client-id counts.
pub fn channel_clients(prefix: &str, channel: &str) -> String {
    format!("{prefix}:{{ch:{channel}}}:cl")
}

/// The name index of active channels.
pub fn name_index(prefix: &str) -> String {
    format!("{prefix}:idx:name")
}

/// The busiest-first index of active channels.
pub fn busy_index(prefix: &str) -> String {
    format!("{prefix}:idx:busy")
}

/// Every connection's record, by connection id.
pub fn connections(prefix: &str) -> String {
    format!("{prefix}:conns")
}

/// The connections a token owns.
pub fn token_connections(prefix: &str, token: &str) -> String {
    format!("{prefix}:tok:{token}:conns")
}

/// A session's current token.
pub fn session(prefix: &str, session: &str) -> String {
    format!("{prefix}:sess:{session}")
}

/// The partition count the state is laid out in (under the prefix
/// without hash tag: one per deployment).
pub fn partitions(prefix: &str) -> String {
    format!("{prefix}:partitions")
}

/// App-wide sums of the channels' counters (`c`, `pm`).
pub fn totals(prefix: &str) -> String {
    format!("{prefix}:totals")
}

/// The lease deadlines.
pub fn leases(prefix: &str) -> String {
    format!("{prefix}:leases")
}

/// The event stream of one shard.
pub fn events(prefix: &str, shard: u32) -> String {
    format!("{prefix}:{{ev:{shard}}}")
}

/// A key that never exists, in the state's slot: on a Redis Cluster every
/// function call checks it is missing before it changes anything, which
/// fails exactly while the slot migrates away from the node (a missing key
/// of a migrating slot is redirected), so that no call stops halfway on a
/// key it would create (see `lua/call.lua`).
pub fn probe(prefix: &str) -> String {
    format!("{prefix}:probe")
}

/// A key that exists while any other key of the state does, on a Redis
/// Cluster: every function call declares it as its one key, so that while
/// the state's slot migrates the call runs where the state is (see
/// `RedisStore::ping`, which creates it).
pub fn anchor(prefix: &str) -> String {
    format!("{prefix}:anchor")
}

/// The number of event shards the replicas sharing this Redis use.
pub fn event_shards(prefix: &str) -> String {
    format!("{prefix}:event-shards")
}

/// Integration rules, by id.
pub fn int_rules(prefix: &str) -> String {
    format!("{prefix}:int:rules")
}

/// The integration rules' version.
pub fn int_version(prefix: &str) -> String {
    format!("{prefix}:int:ver")
}

/// Per event shard, the last change enqueued for integrations.
pub fn int_high_water(prefix: &str) -> String {
    format!("{prefix}:int:hw")
}

/// Per channel, its metrics after the last change enqueued.
pub fn int_last(prefix: &str) -> String {
    format!("{prefix}:int:last")
}

/// An integration rule's delivery queue.
pub fn int_queue(prefix: &str, rule: &str) -> String {
    format!("{prefix}:int:q:{rule}")
}

/// An integration rule's staged batches.
pub fn int_staged(prefix: &str, rule: &str) -> String {
    format!("{prefix}:int:st:{rule}")
}

/// An integration rule's dead letters.
pub fn int_dead(prefix: &str, rule: &str) -> String {
    format!("{prefix}:int:dl:{rule}")
}

/// An integration rule's delivery lease.
pub fn int_lease(prefix: &str, rule: &str) -> String {
    format!("{prefix}:int:lease:{rule}")
}

/// The Pub/Sub channel on which an enqueue that appended entries wakes
/// every replica's delivery workers (a channel, not a key).
pub fn int_wake(prefix: &str) -> String {
    format!("{prefix}:int:wake")
}

pub use crate::domain::events::shard_of;

/// The exclusive upper bound, for `ZRANGE BYLEX`, of names starting with
/// `prefix`: `+` when there is none.
pub fn prefix_upper_bound(prefix: &str) -> Vec<u8> {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0xff {
            bytes.push(last + 1);
            let mut out = vec![b'('];
            out.extend(bytes);
            return out;
        }
    }
    b"+".to_vec()
}

#[cfg(test)]
mod partition_tag_tests {
    use super::*;

    /// Each partition's tag lies in its own equal share of the slots, and
    /// tags are distinct.
    #[test]
    fn partition_tags_spread_evenly_over_the_slots() {
        assert_eq!(tag_slot("p:0"), 1029, "CRC16/XMODEM as the cluster computes it");
        for n in (1..=40).chain([255, 256]) {
            let tags: Vec<String> = (0..n).map(|p| partition_tag(p, n)).collect();
            for (p, tag) in tags.iter().enumerate() {
                let (lo, hi) = partition_slots(p as u32, n);
                let slot = u64::from(tag_slot(tag));
                assert!(lo <= slot && slot < hi, "{tag} of {n}: {slot} not in {lo}..{hi}");
                let equal = (p as u64 * 16_384 / u64::from(n), (p as u64 + 1) * 16_384 / u64::from(n));
                assert!(equal.0 < lo, "inside its share, away from its edges");
                assert!(hi <= equal.1);
            }
            let distinct: std::collections::HashSet<&String> = tags.iter().collect();
            assert_eq!(distinct.len(), n as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_bounds() {
        assert_eq!(prefix_upper_bound(""), b"+");
        assert_eq!(prefix_upper_bound("ab"), b"(ac");
        assert_eq!(prefix_upper_bound("a\u{7f}"), b"(a\x80");
    }

    #[test]
    fn a_tagged_prefix_puts_its_tag_first() {
        assert_eq!(tagged("occupancy", "p:0"), "occupancy:{p:0}");
        // the first braces decide the slot: the tag's, not the channel's
        assert_eq!(
            channel_metrics(&tagged("occupancy", "p:0"), "a"),
            "occupancy:{p:0}:{ch:a}:m"
        );
    }

    #[test]
    fn prefixes() {
        assert!(validate_prefix("occupancy").is_ok());
        assert!(validate_prefix("").is_err());
        assert!(validate_prefix("a{b").is_err());
        assert!(validate_prefix("a b").is_err());
    }
}
