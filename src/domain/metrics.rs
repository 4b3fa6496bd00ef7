//! Occupancy metrics and how modes feed them.

use super::mode::{Mode, ModeSet};

/// Occupancy metrics of one channel (Ably's set, plus the object and
/// unique-client counts). In JSON (the HTTP side), Ably's camelCase names
/// (`presenceMembers`), every metric present, zero included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    /// Distinct connections attached.
    pub connections: u32,
    /// Attached connections holding [`Mode::Publish`].
    pub publishers: u32,
    /// Attached connections holding [`Mode::Subscribe`].
    pub subscribers: u32,
    /// Attached connections holding [`Mode::Presence`].
    pub presence_connections: u32,
    /// Distinct (client id, connection id) pairs entered into presence.
    pub presence_members: u32,
    /// Attached connections holding [`Mode::PresenceSubscribe`].
    pub presence_subscribers: u32,
    /// Attached connections holding [`Mode::ObjectPublish`].
    pub object_publishers: u32,
    /// Attached connections holding [`Mode::ObjectSubscribe`].
    pub object_subscribers: u32,
    /// Distinct client ids among the presence members.
    pub presence_clients: u32,
}

/// One metric of [`Metrics`], for filtering and iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// `connections`
    Connections,
    /// `publishers`
    Publishers,
    /// `subscribers`
    Subscribers,
    /// `presence_connections`
    PresenceConnections,
    /// `presence_members`
    PresenceMembers,
    /// `presence_subscribers`
    PresenceSubscribers,
    /// `object_publishers`
    ObjectPublishers,
    /// `object_subscribers`
    ObjectSubscribers,
    /// `presence_clients`
    PresenceClients,
}

impl Category {
    /// Every category, in the order of the stores' encoding.
    pub const ALL: [Category; 9] = [
        Category::Connections,
        Category::Publishers,
        Category::Subscribers,
        Category::PresenceConnections,
        Category::PresenceMembers,
        Category::PresenceSubscribers,
        Category::ObjectPublishers,
        Category::ObjectSubscribers,
        Category::PresenceClients,
    ];
}

impl Metrics {
    /// Whether any connection is attached (Ably's `isActive`).
    pub fn is_active(&self) -> bool {
        self.connections > 0
    }

    /// The value of one category.
    pub fn get(&self, c: Category) -> u32 {
        match c {
            Category::Connections => self.connections,
            Category::Publishers => self.publishers,
            Category::Subscribers => self.subscribers,
            Category::PresenceConnections => self.presence_connections,
            Category::PresenceMembers => self.presence_members,
            Category::PresenceSubscribers => self.presence_subscribers,
            Category::ObjectPublishers => self.object_publishers,
            Category::ObjectSubscribers => self.object_subscribers,
            Category::PresenceClients => self.presence_clients,
        }
    }

    /// A mutable reference to one category.
    pub fn get_mut(&mut self, c: Category) -> &mut u32 {
        match c {
            Category::Connections => &mut self.connections,
            Category::Publishers => &mut self.publishers,
            Category::Subscribers => &mut self.subscribers,
            Category::PresenceConnections => &mut self.presence_connections,
            Category::PresenceMembers => &mut self.presence_members,
            Category::PresenceSubscribers => &mut self.presence_subscribers,
            Category::ObjectPublishers => &mut self.object_publishers,
            Category::ObjectSubscribers => &mut self.object_subscribers,
            Category::PresenceClients => &mut self.presence_clients,
        }
    }

    /// The metrics as an array in [`Category::ALL`] order.
    pub fn to_array(&self) -> [u32; 9] {
        Category::ALL.map(|c| self.get(c))
    }

    /// Metrics from an array in [`Category::ALL`] order.
    pub fn from_array(values: [u32; 9]) -> Self {
        let mut m = Metrics::default();
        for (c, v) in Category::ALL.into_iter().zip(values) {
            *m.get_mut(c) = v;
        }
        m
    }

    /// Adds (or, with `sign` -1, removes) one connection holding `modes`.
    /// Presence members and clients are counted separately.
    pub fn add_connection(&mut self, modes: ModeSet, sign: i32) {
        let step = |v: &mut u32| {
            *v = if sign >= 0 {
                v.saturating_add(1)
            } else {
                v.saturating_sub(1)
            }
        };
        step(&mut self.connections);
        for mode in Mode::ALL {
            if modes.contains(mode) {
                step(self.get_mut(mode_category(mode)));
            }
        }
    }
}

/// App-wide totals, kept by the stores as channels change (never by
/// scanning): what `/stats`, `GetStats` and `occupancy stats` report. In
/// JSON (the HTTP side), camelCase names (`activeChannels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    /// Channels with at least one connection attached.
    pub active_channels: u64,
    /// The sum of every active channel's `connections` (a connection
    /// attached to three channels counts three times, as in the channels'
    /// own counts).
    pub connections: u64,
    /// The sum of every active channel's `presence_members`.
    pub presence_members: u64,
    /// Sessions (front end leases) currently open.
    pub sessions: u64,
}

/// The category a mode is counted in.
pub const fn mode_category(mode: Mode) -> Category {
    match mode {
        Mode::Publish => Category::Publishers,
        Mode::Subscribe => Category::Subscribers,
        Mode::Presence => Category::PresenceConnections,
        Mode::PresenceSubscribe => Category::PresenceSubscribers,
        Mode::ObjectPublish => Category::ObjectPublishers,
        Mode::ObjectSubscribe => Category::ObjectSubscribers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_feeds_exactly_its_category() {
        for mode in Mode::ALL {
            let mut m = Metrics::default();
            m.add_connection(ModeSet::EMPTY.with(mode), 1);
            assert_eq!(m.connections, 1);
            for c in Category::ALL {
                let expected = u32::from(c == Category::Connections || c == mode_category(mode));
                assert_eq!(m.get(c), expected, "{mode:?} {c:?}");
            }
            m.add_connection(ModeSet::EMPTY.with(mode), -1);
            assert_eq!(m, Metrics::default());
        }
    }

    #[test]
    fn array_round_trip() {
        let m = Metrics::from_array([1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(m.presence_members, 5);
        assert_eq!(m.presence_clients, 9);
        assert_eq!(m.to_array(), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    }
}
