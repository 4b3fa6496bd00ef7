//! Partitions: the state split by a hash of the channel name, so that a
//! Redis Cluster can place and move each part whole. This module holds the
//! rules that do not depend on where a partition lives: which partition a
//! channel is in, and how pages listed by each partition make the one page
//! a single store would answer.

use super::events::shard_of;
use super::list::{busy_key, encode_cursor, ListOrder, ListPage, ListQuery, ListedChannel};
use super::ops::{Applied, KeepAliveOutcome, OpResult, OpStatus};

/// The partition of `channel` among `partitions`: the event-shard hash
/// ([`shard_of`]), so that partitions and event shards can map one to one.
pub fn partition_of(channel: &str, partitions: u32) -> u32 {
    shard_of(channel, partitions)
}

/// The items of a request by partition: for each partition that has any,
/// the indexes of its items in request order. A batch becomes one call per
/// listed partition, and each call's answers go back to these indexes, so
/// the caller sees them in its own order.
pub fn split_by_partition<T>(items: &[T], channel: impl Fn(&T) -> &str, partitions: u32) -> Vec<(u32, Vec<usize>)> {
    let mut by: Vec<Vec<usize>> = vec![Vec::new(); partitions.max(1) as usize];
    for (i, item) in items.iter().enumerate() {
        by[partition_of(channel(item), partitions) as usize].push(i);
    }
    by.into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_empty())
        .map(|(p, v)| (p as u32, v))
        .collect()
}

/// Merges one page from each partition, every one read with `q`, into the
/// page one store holding every channel answers for `q`: the same
/// channels, in the same order, with the same cursor. A walk over
/// partitions therefore keeps every guarantee of a walk over one store (no
/// repeats, no empty page while more follow, an exact busiest-first first
/// page), and a page costs one page per partition, whatever the number of
/// channels.
///
/// A partition's page holds its first `limit` channels after the cursor and
/// says whether more follow. The first `limit` of all pages' channels are
/// the first `limit` of all partitions': a channel a full page left out
/// comes after that page's `limit` channels, so it could not be among them.
///
/// The busiest-first index key holds the connection count, so in that order
/// the pages must be read with metrics (drop them afterwards when the
/// caller did not ask for them); a channel without them sorts as having no
/// connections.
pub fn merge_pages(q: &ListQuery, pages: Vec<ListPage>) -> ListPage {
    let key = |c: &ListedChannel| match q.order {
        ListOrder::Name => c.name.as_str().to_string(),
        ListOrder::ConnectionsDesc => busy_key(c.metrics.map_or(0, |m| m.connections), c.name.as_str()),
    };
    let mut more = false;
    let mut items: Vec<(String, ListedChannel)> = Vec::with_capacity(pages.iter().map(|p| p.channels.len()).sum());
    for page in pages {
        more |= page.next_cursor.is_some();
        items.extend(page.channels.into_iter().map(|c| (key(&c), c)));
    }
    items.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let limit = q.limit as usize;
    more |= items.len() > limit;
    items.truncate(limit);
    let next_cursor = if more {
        items.last().map(|(k, _)| encode_cursor(q.order, k))
    } else {
        None
    };
    ListPage {
        channels: items.into_iter().map(|(_, c)| c).collect(),
        next_cursor,
    }
}

/// A fresh lease epoch for a lease opened on several partitions at once:
/// a random non-zero 64-bit number, so it never repeats.
pub fn fresh_epoch() -> u64 {
    rand::random::<u64>().max(1)
}

/// One write's answers from the partitions it touched, made into the
/// answer one store gives, and what the router must still do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedWrite {
    /// The answer.
    pub applied: Applied,
    /// Indexes of operations whose partition had applied them already (a
    /// retry after a partial failure): reported
    /// [`OpStatus::AlreadyApplied`], their metrics to be read again when
    /// the write asked for them.
    pub reread: Vec<usize>,
    /// When the write opened the session's lease (under `opened`) in some
    /// partitions: the partitions that must open it too, so that every
    /// partition holds the lease under one epoch.
    pub spread: Vec<u32>,
}

/// Merges the answers of one write split by partition (`split` as
/// [`split_by_partition`] gives it, `replies` in the same order, `opened`
/// the epoch the write offered a lease it opens, 0 for none) into one
/// answer:
///
/// - a refusal of any partition (another owner's session or connection,
///   or a lease epoch that is not the session's) is the answer: the
///   caller re-syncs or gives up, as with one store;
/// - a sequenced write (`sequenced`) that ran in a partition left holding
///   no lease there while another partition holds the session's live lease
///   (one this write did not open) is refused as [`Applied::WrongEpoch`]
///   with that lease's epoch: the partition never got the lease (a spread
///   cut short by a failure) or lost it, so it could not record the
///   sequence, and a repeat of the batch would run its operations there
///   again. The front end re-syncs, as the next KeepAlive would make it
///   (operations of other partitions may have applied, as with a refusal
///   of another owner's);
/// - every partition stale: stale (the retry of a batch applied whole);
/// - otherwise done, the stale partitions' operations reported as
///   [`OpStatus::AlreadyApplied`]: the sequence is checked per partition,
///   so a retry after a partial failure applies exactly what is missing.
pub fn merge_writes(
    ops: usize,
    partitions: u32,
    split: &[(u32, Vec<usize>)],
    replies: Vec<Applied>,
    opened: u64,
    sequenced: bool,
) -> MergedWrite {
    let refusal = replies
        .iter()
        .find(|a| matches!(a, Applied::NotOwner { .. }))
        .or_else(|| replies.iter().find(|a| matches!(a, Applied::WrongEpoch { .. })));
    if let Some(r) = refusal {
        return MergedWrite {
            applied: r.clone(),
            reread: Vec::new(),
            spread: Vec::new(),
        };
    }
    let epochs: Vec<u64> = replies
        .iter()
        .filter_map(|a| match a {
            Applied::Done { epoch, .. } | Applied::Stale { epoch } => Some(*epoch),
            _ => None,
        })
        .filter(|e| *e != 0)
        .collect();
    // partitions disagree only when one lost or let expire its copy; the
    // next KeepAlive finds that out and makes the front end re-sync
    let epoch = epochs
        .iter()
        .copied()
        .find(|e| *e != opened)
        .or_else(|| epochs.first().copied())
        .unwrap_or(0);
    let leaseless = replies.iter().any(|a| matches!(a, Applied::Done { epoch: 0, .. }));
    if sequenced && leaseless && epoch != 0 && epoch != opened {
        return MergedWrite {
            applied: Applied::WrongEpoch { epoch },
            reread: Vec::new(),
            spread: Vec::new(),
        };
    }
    if replies.iter().all(|a| matches!(a, Applied::Stale { .. })) {
        return MergedWrite {
            applied: Applied::Stale { epoch },
            reread: Vec::new(),
            spread: Vec::new(),
        };
    }
    let mut results = vec![
        OpResult {
            status: OpStatus::AlreadyApplied,
            metrics: None,
        };
        ops
    ];
    let mut reread = Vec::new();
    let mut holders = Vec::new();
    for ((p, idx), reply) in split.iter().zip(replies) {
        match reply {
            Applied::Done { results: r, epoch: e } => {
                for (i, res) in idx.iter().zip(r) {
                    results[*i] = res;
                }
                if opened != 0 && e == opened {
                    holders.push(*p);
                }
            }
            _ => reread.extend(idx.iter().copied()),
        }
    }
    let spread = if holders.is_empty() {
        Vec::new()
    } else {
        (0..partitions).filter(|p| !holders.contains(p)).collect()
    };
    MergedWrite {
        applied: Applied::Done { results, epoch },
        reread,
        spread,
    }
}

/// What the partitions' answers to one KeepAlive (each offered `opened`
/// for a lease it opens) mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergedKeepAlive {
    /// Every partition agrees: the answer.
    Agreed(KeepAliveOutcome),
    /// The session belongs to another owner: the answer is
    /// [`KeepAliveOutcome::NotOwner`], once the leases this KeepAlive
    /// opened (in these partitions) are closed again.
    NotOwner(Vec<u32>),
    /// The partitions disagree: some hold the session's lease and some do
    /// not (one lost its data in a failover, or let its copy expire), or
    /// they hold it under different epochs. Nobody can tell what the
    /// session holds any more: the router closes it everywhere and opens
    /// a fresh lease, answered as unknown, so the front end re-syncs.
    Disagree,
}

/// Merges the answers of a KeepAlive sent to every partition.
pub fn merge_keep_alives(replies: &[KeepAliveOutcome], opened: u64) -> MergedKeepAlive {
    if replies.contains(&KeepAliveOutcome::NotOwner) {
        let fresh = (0..replies.len() as u32)
            .filter(|p| matches!(replies[*p as usize], KeepAliveOutcome::Unknown { epoch, .. } if epoch == opened))
            .collect();
        return MergedKeepAlive::NotOwner(fresh);
    }
    // the lease lengths agree too unless a KeepAlive that set one failed
    // half-way; the next one sets it everywhere again
    let same = |a: &KeepAliveOutcome, b: &KeepAliveOutcome| {
        std::mem::discriminant(a) == std::mem::discriminant(b) && a.epoch() == b.epoch()
    };
    match replies.first() {
        Some(first) if replies.iter().all(|r| same(r, first)) => match first {
            KeepAliveOutcome::Unknown { epoch, .. } if *epoch != opened => MergedKeepAlive::Disagree,
            _ => MergedKeepAlive::Agreed(*first),
        },
        _ => MergedKeepAlive::Disagree,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::domain::{Batch, ChannelName, ConnectionId, ModeSet, OccupancyState, Operation, SessionId};

    /// Attaches `connections` connections to each channel, in `states`
    /// chosen by `state_of`.
    fn fill(states: &mut [OccupancyState], channels: &[(String, u32)], state_of: impl Fn(&str) -> usize) {
        let session = SessionId::parse("s", "fe").unwrap();
        for (name, connections) in channels {
            let ops: Vec<Operation> = (0..*connections)
                .map(|i| Operation::Attach {
                    connection: ConnectionId::parse("c", format!("{name}/{i}")).unwrap(),
                    channel: ChannelName::parse("ch", name.clone()).unwrap(),
                    modes: ModeSet::EMPTY,
                })
                .collect();
            let state = &mut states[state_of(name)];
            state.apply(0, &session, 60_000, Batch::new(&ops, false), &mut Vec::new());
        }
    }

    fn done(status: OpStatus, n: usize, epoch: u64) -> Applied {
        Applied::Done {
            results: vec![OpResult { status, metrics: None }; n],
            epoch,
        }
    }

    /// A retry after a partial failure: the partition that had applied the
    /// batch answers stale, the other applies it; the operations of the
    /// first are answered as applied before, in request order.
    #[test]
    fn a_partly_applied_retry_answers_already_applied_where_it_was() {
        let split = vec![(0, vec![0, 2]), (2, vec![1])];
        let replies = vec![Applied::Stale { epoch: 7 }, done(OpStatus::Ok, 1, 7)];
        let merged = merge_writes(3, 3, &split, replies, 99, true);
        let Applied::Done { results, epoch } = &merged.applied else {
            panic!("{merged:?}");
        };
        let statuses: Vec<OpStatus> = results.iter().map(|r| r.status).collect();
        assert_eq!(
            statuses,
            [OpStatus::AlreadyApplied, OpStatus::Ok, OpStatus::AlreadyApplied]
        );
        assert_eq!((*epoch, merged.reread.as_slice()), (7, &[0, 2][..]));
        assert!(merged.spread.is_empty(), "nothing opened");
        let all_stale = merge_writes(3, 3, &split, vec![Applied::Stale { epoch: 7 }; 2], 99, true);
        assert_eq!(all_stale.applied, Applied::Stale { epoch: 7 });
    }

    /// A refusal of any partition is the answer, another owner's first.
    #[test]
    fn a_refusal_anywhere_is_the_answer() {
        let split = vec![(0, vec![0]), (1, vec![1]), (2, vec![2])];
        let replies = vec![
            done(OpStatus::Ok, 1, 7),
            Applied::WrongEpoch { epoch: 7 },
            Applied::NotOwner { connection: true },
        ];
        let merged = merge_writes(3, 3, &split, replies, 0, true);
        assert_eq!(merged.applied, Applied::NotOwner { connection: true });
        let replies = vec![
            done(OpStatus::Ok, 1, 7),
            Applied::WrongEpoch { epoch: 7 },
            done(OpStatus::Ok, 1, 7),
        ];
        assert_eq!(
            merge_writes(3, 3, &split, replies, 0, true).applied,
            Applied::WrongEpoch { epoch: 7 }
        );
    }

    /// A write that opened the lease (under the epoch it offered) in the
    /// partitions it touched asks for it in all the others.
    #[test]
    fn a_lease_opened_by_a_write_spreads_to_the_other_partitions() {
        let split = vec![(1, vec![0]), (3, vec![1])];
        let replies = vec![done(OpStatus::Ok, 1, 42), done(OpStatus::Ok, 1, 0)];
        let merged = merge_writes(2, 4, &split, replies, 42, true);
        assert_eq!(merged.spread, [0, 2, 3]);
        assert!(matches!(merged.applied, Applied::Done { epoch: 42, .. }));
    }

    /// A sequenced write that ran in a partition holding no lease while
    /// another holds the session's (a spread cut short, or a lost copy) is
    /// refused under that lease's epoch: that partition could not record the
    /// sequence. Unsequenced writes, and a lease this write opened (which it
    /// spreads), are answered as done.
    #[test]
    fn a_sequenced_write_in_a_partition_without_the_lease_is_refused() {
        let split = vec![(0, vec![0]), (1, vec![1])];
        let replies = || vec![Applied::Stale { epoch: 7 }, done(OpStatus::NotPresenceAttached, 1, 0)];
        assert_eq!(
            merge_writes(2, 3, &split, replies(), 99, true).applied,
            Applied::WrongEpoch { epoch: 7 }
        );
        assert!(matches!(
            merge_writes(2, 3, &split, replies(), 99, false).applied,
            Applied::Done { epoch: 7, .. }
        ));
        let opened = vec![done(OpStatus::Ok, 1, 99), done(OpStatus::NotPresenceAttached, 1, 0)];
        let merged = merge_writes(2, 3, &split, opened, 99, true);
        assert!(matches!(merged.applied, Applied::Done { epoch: 99, .. }));
        assert_eq!(merged.spread, [1, 2]);
    }

    /// KeepAlives agree when every partition says the same; a refusal
    /// closes what this KeepAlive opened; anything else is repaired.
    #[test]
    fn keep_alives_agree_refuse_or_disagree() {
        let active = |epoch| KeepAliveOutcome::Active { ttl_ms: 1_000, epoch };
        let unknown = |epoch| KeepAliveOutcome::Unknown { ttl_ms: 1_000, epoch };
        assert_eq!(
            merge_keep_alives(&[active(5), active(5)], 9),
            MergedKeepAlive::Agreed(active(5))
        );
        assert_eq!(
            merge_keep_alives(&[unknown(9), unknown(9)], 9),
            MergedKeepAlive::Agreed(unknown(9))
        );
        assert_eq!(
            merge_keep_alives(&[unknown(9), KeepAliveOutcome::NotOwner, active(5)], 9),
            MergedKeepAlive::NotOwner(vec![0])
        );
        for split in [[active(5), unknown(9)], [active(5), active(6)]] {
            assert_eq!(merge_keep_alives(&split, 9), MergedKeepAlive::Disagree);
        }
    }

    /// Every item lands once, in its channel's partition, in request order.
    #[test]
    fn a_split_keeps_each_partitions_items_in_order() {
        let names: Vec<String> = (0..200).map(|i| format!("room:{i}")).collect();
        let split = split_by_partition(&names, String::as_str, 5);
        let mut seen = vec![false; names.len()];
        for (p, idx) in &split {
            assert!(!idx.is_empty());
            assert!(idx.windows(2).all(|w| w[0] < w[1]), "request order");
            for &i in idx {
                assert_eq!(partition_of(&names[i], 5), *p);
                assert!(!std::mem::replace(&mut seen[i], true), "{i} twice");
            }
        }
        assert!(seen.iter().all(|s| *s));
        assert!(split.len() > 1, "200 names over 5 partitions use more than one");
        assert_eq!(
            split_by_partition(&names, String::as_str, 1),
            vec![(0, (0..200).collect())]
        );
    }

    proptest! {
        /// Every page of a walk over partitions, in both orders, under any
        /// prefix and page size, is the page one store answers.
        #[test]
        fn a_walk_over_partitions_returns_the_pages_of_one_store(
            names in proptest::collection::btree_map("[ab:]{1,6}", 1u32..4, 0..120),
            partitions in 1u32..7,
            limit in 1u32..12,
            prefix in prop_oneof![Just(String::new()), "[ab:]{1,2}"],
            busiest in any::<bool>(),
        ) {
            let channels: Vec<(String, u32)> = names.into_iter().collect();
            let mut one = [OccupancyState::new()];
            fill(&mut one, &channels, |_| 0);
            let mut parts: Vec<OccupancyState> = (0..partitions).map(|_| OccupancyState::new()).collect();
            fill(&mut parts, &channels, |n| partition_of(n, partitions) as usize);
            let order = if busiest { ListOrder::ConnectionsDesc } else { ListOrder::Name };
            let mut cursor = String::new();
            for _ in 0..=channels.len() + 1 {
                let q = ListQuery::new(prefix.clone(), limit, &cursor, order, true).unwrap();
                let want = one[0].list(&q);
                let got = merge_pages(&q, parts.iter().map(|p| p.list(&q)).collect());
                prop_assert_eq!(&got, &want);
                match want.next_cursor {
                    Some(c) => {
                        prop_assert_eq!(want.channels.len(), limit as usize, "a page before the last is full");
                        cursor = c;
                    }
                    None => return Ok(()),
                }
            }
            prop_assert!(false, "the walk did not end");
        }
    }
}
