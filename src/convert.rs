//! Domain values as protobuf messages and back: one `From` impl per
//! direction, shared by the gRPC adapters ([`crate::api`]), the event hub
//! ([`crate::fanout`], which encodes each event once for every subscriber)
//! and the HTTP side (which reads those encoded events back).
//!
//! Validation of requests, which names the request's fields, is
//! [`crate::api::convert`]'s.

use crate::domain::{Metrics, Totals};
use crate::proto::v1 as pb;

impl From<Metrics> for pb::Metrics {
    fn from(m: Metrics) -> Self {
        Self {
            connections: m.connections,
            publishers: m.publishers,
            subscribers: m.subscribers,
            presence_connections: m.presence_connections,
            presence_members: m.presence_members,
            presence_subscribers: m.presence_subscribers,
            object_publishers: m.object_publishers,
            object_subscribers: m.object_subscribers,
            presence_clients: m.presence_clients,
        }
    }
}

impl From<pb::Metrics> for Metrics {
    fn from(m: pb::Metrics) -> Self {
        Self {
            connections: m.connections,
            publishers: m.publishers,
            subscribers: m.subscribers,
            presence_connections: m.presence_connections,
            presence_members: m.presence_members,
            presence_subscribers: m.presence_subscribers,
            object_publishers: m.object_publishers,
            object_subscribers: m.object_subscribers,
            presence_clients: m.presence_clients,
        }
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
