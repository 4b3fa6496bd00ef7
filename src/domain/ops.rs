//! Write operations of the connection API and their outcomes.

use super::ids::{ChannelName, ClientId, ConnectionId};
use super::metrics::Metrics;
use super::mode::ModeSet;

/// Largest number of operations in one batch.
pub const MAX_BATCH: usize = 10_000;

/// One write of a front end, applied within its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Attach `connection` to `channel` with `modes` (replacing earlier modes).
    Attach {
        /// The connection.
        connection: ConnectionId,
        /// The channel.
        channel: ChannelName,
        /// Its modes.
        modes: ModeSet,
    },
    /// Detach `connection` from `channel`, removing its presence members there.
    Detach {
        /// The connection.
        connection: ConnectionId,
        /// The channel.
        channel: ChannelName,
    },
    /// Enter `client` into presence on `channel` through `connection`.
    Enter {
        /// The connection.
        connection: ConnectionId,
        /// The channel.
        channel: ChannelName,
        /// The member's client id.
        client: ClientId,
    },
    /// Remove the presence member (`client`, `connection`) from `channel`.
    Leave {
        /// The connection.
        connection: ConnectionId,
        /// The channel.
        channel: ChannelName,
        /// The member's client id.
        client: ClientId,
    },
}

impl Operation {
    /// The channel the operation changes.
    pub fn channel(&self) -> &ChannelName {
        match self {
            Operation::Attach { channel, .. }
            | Operation::Detach { channel, .. }
            | Operation::Enter { channel, .. }
            | Operation::Leave { channel, .. } => channel,
        }
    }

    /// The connection the operation names.
    pub fn connection(&self) -> &ConnectionId {
        match self {
            Operation::Attach { connection, .. }
            | Operation::Detach { connection, .. }
            | Operation::Enter { connection, .. }
            | Operation::Leave { connection, .. } => connection,
        }
    }
}

/// Whether an operation was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpStatus {
    /// Applied, or already in effect.
    Ok,
    /// Not applied: entering presence needs the connection attached with
    /// presence mode.
    NotPresenceAttached,
}

impl OpStatus {
    /// The message given to callers for a refused operation.
    pub fn message(self) -> &'static str {
        match self {
            OpStatus::Ok => "",
            OpStatus::NotPresenceAttached => "connection is not attached to the channel with MODE_PRESENCE",
        }
    }
}

/// The outcome of one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpResult {
    /// Applied or not.
    pub status: OpStatus,
    /// The channel's metrics right after the operation, when asked for.
    pub metrics: Option<Metrics>,
}

/// What a KeepAlive found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAliveOutcome {
    /// The session was alive; its lease now runs `ttl_ms` from now.
    Active {
        /// Lease length in force.
        ttl_ms: u64,
    },
    /// The session was unknown or expired; a new empty lease is open.
    Unknown {
        /// Lease length in force.
        ttl_ms: u64,
    },
}
