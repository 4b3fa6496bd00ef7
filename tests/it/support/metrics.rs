//! The nine occupancy metrics in one fixed order: as an array, by their
//! JSON names, and as the HTTP side's JSON.

use occupancy::http::json::MetricsJson;
use occupancy::proto::v1 as pb;

/// The metrics' names in Ably's JSON, in the order of [`arr`].
pub const JSON_NAMES: [&str; 9] = [
    "connections",
    "publishers",
    "subscribers",
    "presenceConnections",
    "presenceMembers",
    "presenceSubscribers",
    "objectPublishers",
    "objectSubscribers",
    "presenceClients",
];

/// Metrics as an array: connections, publishers, subscribers,
/// presence_connections, presence_members, presence_subscribers,
/// object_publishers, object_subscribers, presence_clients.
pub fn arr(m: &pb::Metrics) -> [u32; 9] {
    [
        m.connections,
        m.publishers,
        m.subscribers,
        m.presence_connections,
        m.presence_members,
        m.presence_subscribers,
        m.object_publishers,
        m.object_subscribers,
        m.presence_clients,
    ]
}

/// The HTTP side's JSON of `m`, built here rather than by the service's
/// own conversion, so the tests check that conversion.
pub fn json(m: &pb::Metrics) -> MetricsJson {
    let [connections, publishers, subscribers, presence_connections, presence_members, presence_subscribers, object_publishers, object_subscribers, presence_clients] =
        arr(m);
    MetricsJson {
        connections,
        publishers,
        subscribers,
        presence_connections,
        presence_members,
        presence_subscribers,
        object_publishers,
        object_subscribers,
        presence_clients,
    }
}
