//! Partitions: the state split by a hash of the channel name, so that a
//! Redis Cluster can place and move each part whole. This module holds the
//! rules that do not depend on where a partition lives: which partition a
//! channel is in, and how pages listed by each partition make the one page
//! a single store would answer.

use super::events::shard_of;
use super::list::{busy_key, encode_cursor, ListOrder, ListPage, ListQuery, ListedChannel};

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
