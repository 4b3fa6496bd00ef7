//! The JSON shapes of the HTTP side: Ably's `ChannelDetails` and
//! `[meta]occupancy` message, camelCase, with every metric present (zero
//! included), as Ably's REST answers.

use serde::{Deserialize, Serialize};

use crate::domain::{Metrics, Totals};

/// A channel's metrics (Ably's names, plus `presenceClients`): the domain's
/// [`Metrics`], which serializes in these names.
pub type MetricsJson = Metrics;

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
                occupancy: OccupancyJson { metrics: m },
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

/// App-wide totals: the domain's [`Totals`], which serializes in
/// camelCase (`activeChannels`).
pub type StatsJson = Totals;

/// A page of `GET /channels`: channel names (`by=id`) or their details
/// (`by=value`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ChannelPageJson {
    /// `by=value`: each channel's details.
    Details(Vec<ChannelDetailsJson>),
    /// `by=id`: channel names only.
    Ids(Vec<String>),
}

/// `GET /channels?envelope=json`: the page and its next-page cursor in the
/// body, for clients that cannot read the `Link` header (browsers' cross
/// origin requests, some HTTP libraries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelListEnvelopeJson {
    /// The HTTP status, 200.
    pub status_code: u16,
    /// The page, as the body would be without the envelope.
    pub response: ChannelPageJson,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// The `Link` header's value; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}
