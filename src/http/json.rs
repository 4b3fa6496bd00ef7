//! The JSON shapes of the HTTP side: Ably's `ChannelDetails` and
//! `[meta]occupancy` message, camelCase, with every metric present (zero
//! included), as Ably's REST answers.

use serde::{Deserialize, Serialize};

use crate::domain::{Metrics, Totals};

/// A channel's metrics (Ably's names, plus `presenceClients`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsJson {
    /// Connections attached.
    pub connections: u32,
    /// Holding the publish mode.
    pub publishers: u32,
    /// Holding the subscribe mode.
    pub subscribers: u32,
    /// Holding the presence mode.
    pub presence_connections: u32,
    /// Presence members.
    pub presence_members: u32,
    /// Holding the presence-subscribe mode.
    pub presence_subscribers: u32,
    /// Holding the object-publish mode.
    pub object_publishers: u32,
    /// Holding the object-subscribe mode.
    pub object_subscribers: u32,
    /// Distinct client ids among the presence members.
    pub presence_clients: u32,
}

impl From<Metrics> for MetricsJson {
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

/// Ably's `ChannelDetails.status.occupancy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OccupancyJson {
    /// The metrics.
    pub metrics: MetricsJson,
}

/// Ably's `ChannelDetails.status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusJson {
    /// Whether any connection is attached.
    pub is_active: bool,
    /// The occupancy.
    pub occupancy: OccupancyJson,
}

/// Ably's `ChannelDetails`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelDetailsJson {
    /// The channel's name.
    pub channel_id: String,
    /// Its status.
    pub status: StatusJson,
}

impl ChannelDetailsJson {
    /// The details of `channel` with metrics `m`.
    pub fn new(channel: String, m: Metrics) -> Self {
        Self {
            channel_id: channel,
            status: StatusJson {
                is_active: m.is_active(),
                occupancy: OccupancyJson { metrics: m.into() },
            },
        }
    }
}

/// The `data` of an occupancy event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventDataJson {
    /// The channel's metrics after the change.
    pub metrics: MetricsJson,
}

/// An Ably `[meta]occupancy` message, as each server-sent event's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OccupancyEventJson {
    /// The event id: also the SSE `id`, to resume from (`Last-Event-ID`).
    pub id: String,
    /// Always `[meta]occupancy`.
    pub name: String,
    /// The channel.
    pub channel: String,
    /// When the change was committed (ms since the Unix epoch).
    pub timestamp: i64,
    /// The metrics.
    pub data: EventDataJson,
}

/// App-wide totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsJson {
    /// Channels with at least one connection.
    pub active_channels: u64,
    /// Sum of every channel's connections.
    pub connections: u64,
    /// Sum of every channel's presence members.
    pub presence_members: u64,
    /// Open sessions.
    pub sessions: u64,
}

impl From<Totals> for StatsJson {
    fn from(t: Totals) -> Self {
        Self {
            active_channels: t.active_channels,
            connections: t.connections,
            presence_members: t.presence_members,
            sessions: t.sessions,
        }
    }
}
