//! Which events a change makes for a rule: the occupied/vacated flips and
//! the category filter, decided from the channel's metrics before and after
//! the change. The memory store calls this; the Redis store's enqueue
//! script (`lua/integrations/enqueue.lua`) is its port, and the
//! integration store tests feed both the same random changes.

use super::rule::Kind;
use crate::domain::metrics::Category;
use crate::domain::Metrics;

/// The queued entries a change makes for one rule, in the order they are
/// delivered: `[occupied, occupancy]` when the channel becomes occupied,
/// `[occupancy, vacated]` when it empties. `prev` is the channel's metrics
/// before the change (zero when unknown). Each entry says whether it flips
/// the channel between occupied and vacated (those are never debounced).
/// Both stores enqueue exactly this (the Redis store in Lua), checked by
/// the integration tests on both.
pub fn entries_for(prev: &Metrics, now: &Metrics, want_bits: u8, category_bits: u16) -> Vec<(Kind, bool)> {
    let was = prev.connections > 0;
    let is = now.connections > 0;
    let flip = was != is;
    let mut out = Vec::with_capacity(2);
    if flip && is && want_bits & Kind::Occupied.bit() != 0 {
        out.push((Kind::Occupied, true));
    }
    if want_bits & Kind::Occupancy.bit() != 0 {
        let changed = category_bits == 0
            || Category::ALL
                .iter()
                .enumerate()
                .any(|(i, c)| category_bits & (1 << i) != 0 && prev.get(*c) != now.get(*c));
        if changed || flip {
            out.push((Kind::Occupancy, flip));
        }
    }
    if flip && !is && want_bits & Kind::Vacated.bit() != 0 {
        out.push((Kind::Vacated, true));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_follow_flips_and_categories() {
        let zero = Metrics::default();
        let one = Metrics {
            connections: 1,
            subscribers: 1,
            ..Metrics::default()
        };
        let two = Metrics {
            connections: 2,
            subscribers: 1,
            publishers: 1,
            ..Metrics::default()
        };
        let all = 7;
        assert_eq!(
            entries_for(&zero, &one, all, 0),
            vec![(Kind::Occupied, true), (Kind::Occupancy, true)]
        );
        assert_eq!(
            entries_for(&one, &zero, all, 0),
            vec![(Kind::Occupancy, true), (Kind::Vacated, true)]
        );
        assert_eq!(entries_for(&one, &two, all, 0), vec![(Kind::Occupancy, false)]);
        // subscribers did not change: nothing for a rule that asks only for them
        let subs = 1 << 2;
        assert!(entries_for(&one, &two, all, subs).is_empty());
        assert_eq!(entries_for(&zero, &one, 1, subs), vec![(Kind::Occupancy, true)]);
    }
}
