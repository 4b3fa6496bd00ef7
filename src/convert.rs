//! Domain values as protobuf messages and back: one `From` impl per
//! direction, shared by the gRPC adapters ([`crate::api`]), the event hub
//! ([`crate::fanout`], which encodes each event once for every subscriber)
//! and the HTTP side (which reads those encoded events back).
//!
//! Validation of requests, which names the request's fields, is
//! [`crate::api::convert`]'s.

use crate::domain::{Category, Metrics, Totals};
use crate::proto::v1 as pb;

/// The field of `m` that holds category `c`: the one place the protobuf
/// message's fields are named, for both directions.
fn field(m: &mut pb::Metrics, c: Category) -> &mut u32 {
    match c {
        Category::Connections => &mut m.connections,
        Category::Publishers => &mut m.publishers,
        Category::Subscribers => &mut m.subscribers,
        Category::PresenceConnections => &mut m.presence_connections,
        Category::PresenceMembers => &mut m.presence_members,
        Category::PresenceSubscribers => &mut m.presence_subscribers,
        Category::ObjectPublishers => &mut m.object_publishers,
        Category::ObjectSubscribers => &mut m.object_subscribers,
        Category::PresenceClients => &mut m.presence_clients,
    }
}

impl From<Metrics> for pb::Metrics {
    fn from(m: Metrics) -> Self {
        let mut out = pb::Metrics::default();
        for c in Category::ALL {
            *field(&mut out, c) = m.get(c);
        }
        out
    }
}

impl From<pb::Metrics> for Metrics {
    fn from(mut m: pb::Metrics) -> Self {
        Metrics::from_array(Category::ALL.map(|c| *field(&mut m, c)))
    }
}

impl From<Totals> for pb::AppStats {
    fn from(t: Totals) -> Self {
        Self {
            active_channels: t.active_channels,
            connections: t.connections,
            presence_members: t.presence_members,
            sessions: t.sessions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_round_trip_field_by_field() {
        let m = Metrics::from_array([1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let p = pb::Metrics::from(m);
        assert_eq!((p.connections, p.presence_members, p.presence_clients), (1, 5, 9));
        assert_eq!(Metrics::from(p), m);
    }
}
