//! Write operations of the connection API and their outcomes.

use super::ids::{ChannelName, ClientId, ConnectionId};
use super::metrics::Metrics;
use super::mode::ModeSet;

pub use super::limits::{MAX_BATCH, MAX_CHANNELS_PER_CONNECTION, MAX_SYNC_ATTACHMENTS};

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
    /// Not applied: the connection is attached to
    /// [`MAX_CHANNELS_PER_CONNECTION`] channels already.
    TooManyChannels,
    /// Applied by an earlier attempt of the batch, whose answer was lost
    /// (the partition it is in had applied the batch before: see
    /// [`crate::store::partitioned`]).
    AlreadyApplied,
}

impl OpStatus {
    /// The message given to callers for a refused operation.
    pub fn message(self) -> String {
        match self {
            OpStatus::Ok => String::new(),
            OpStatus::AlreadyApplied => "applied by an earlier attempt of this batch".into(),
            OpStatus::NotPresenceAttached => "connection is not attached to the channel with MODE_PRESENCE".into(),
            OpStatus::TooManyChannels => {
                format!("connection is attached to {MAX_CHANNELS_PER_CONNECTION} channels already")
            }
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
        /// The lease's epoch.
        epoch: u64,
    },
    /// The session was unknown or expired; a new empty lease is open.
    Unknown {
        /// Lease length in force.
        ttl_ms: u64,
        /// The new lease's epoch.
        epoch: u64,
    },
    /// The session's live lease belongs to another owner: nothing changed.
    NotOwner,
}

impl KeepAliveOutcome {
    /// The epoch of the lease the KeepAlive extended or opened.
    pub fn epoch(&self) -> u64 {
        match self {
            KeepAliveOutcome::Active { epoch, .. } | KeepAliveOutcome::Unknown { epoch, .. } => *epoch,
            KeepAliveOutcome::NotOwner => 0,
        }
    }
}

/// What became of a write (a batch of operations of one session).
///
/// Epochs identify leases: a session's lease gets a new epoch whenever it
/// is opened afresh, and epochs never repeat. 0 stands for "no lease".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The write ran: one result per operation.
    Done {
        /// Per operation, in order.
        results: Vec<OpResult>,
        /// The epoch of the session's lease after the write; 0 when the
        /// session had no lease and the write left it holding nothing (no
        /// lease was opened).
        epoch: u64,
    },
    /// Not applied: its sequence is not above the last one applied in the
    /// session's lease (a retry, or a batch overtaken by a newer one).
    Stale {
        /// The epoch of the session's live lease.
        epoch: u64,
    },
    /// Not applied: the write named a lease epoch that is not the
    /// session's live lease.
    WrongEpoch {
        /// The epoch of the session's live lease, 0 when it has none.
        epoch: u64,
    },
    /// Not applied: the session's live lease, or a connection an attach
    /// or enter of the write would move, belongs to another owner.
    NotOwner {
        /// Whether it was a connection (else the session itself).
        connection: bool,
    },
}

impl Applied {
    /// The epoch the answer carries.
    pub fn epoch(&self) -> u64 {
        match self {
            Applied::Done { epoch, .. } | Applied::Stale { epoch } | Applied::WrongEpoch { epoch } => *epoch,
            Applied::NotOwner { .. } => 0,
        }
    }
}

/// A write of one session as the stores take it.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// The operations, applied in order.
    pub ops: &'a [Operation],
    /// Report each operation's channel metrics.
    pub include_metrics: bool,
    /// Increasing per batch within a lease; 0 for none (always applies and
    /// leaves the recorded sequence as it is).
    pub sequence: u64,
    /// The lease epoch the batch was built under; 0 for no check.
    pub epoch: u64,
    /// Who writes: the credential that owns the leases it opens, and may
    /// write only to its own ("" when access control is off).
    pub owner: &'a str,
    /// The epoch a lease this write opens takes; 0: the store picks one.
    /// Ignored when the session has a live lease. A caller that gives it
    /// picks a value that never repeats (a random 64-bit number), so that
    /// several stores can hold one lease under one epoch.
    pub open_epoch: u64,
}

impl<'a> Batch<'a> {
    /// An unconditional write of `ops`.
    pub fn new(ops: &'a [Operation], include_metrics: bool) -> Self {
        Self {
            ops,
            include_metrics,
            sequence: 0,
            epoch: 0,
            owner: "",
            open_epoch: 0,
        }
    }
}

/// One attachment of a session with its presence members: what a session
/// holds, as read from a store or as a front end declares it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HeldAttachment {
    /// The connection.
    pub connection: ConnectionId,
    /// The channel.
    pub channel: ChannelName,
    /// Its modes.
    pub modes: ModeSet,
    /// Presence members entered through it, sorted.
    pub members: Vec<ClientId>,
}

/// The operations that turn `current` into `desired` (both the complete
/// holdings of one session), and how many holdings they add or correct and
/// remove.
pub fn sync_operations(current: &[HeldAttachment], desired: &[HeldAttachment]) -> (Vec<Operation>, u32, u32) {
    use std::collections::BTreeMap;
    let key = |a: &HeldAttachment| (a.connection.clone(), a.channel.clone());
    let cur: BTreeMap<_, &HeldAttachment> = current.iter().map(|a| (key(a), a)).collect();
    let want: BTreeMap<_, &HeldAttachment> = desired.iter().map(|a| (key(a), a)).collect();
    let mut ops = Vec::new();
    let (mut added, mut removed) = (0u32, 0u32);
    for (k, a) in &cur {
        if !want.contains_key(k) {
            removed += 1 + a.members.len() as u32;
            ops.push(Operation::Detach {
                connection: a.connection.clone(),
                channel: a.channel.clone(),
            });
        }
    }
    for (k, d) in &want {
        let held = cur.get(k);
        let same_modes = held.is_some_and(|h| h.modes == d.modes);
        if !same_modes {
            added += 1;
            ops.push(Operation::Attach {
                connection: d.connection.clone(),
                channel: d.channel.clone(),
                modes: d.modes,
            });
        }
        // members that survive the attach (a mode change that drops
        // presence removes them)
        let kept: Vec<&ClientId> = match held {
            Some(h) if h.modes.contains(super::Mode::Presence) && d.modes.contains(super::Mode::Presence) => {
                h.members.iter().collect()
            }
            _ => Vec::new(),
        };
        if let Some(h) = held {
            removed += h.members.iter().filter(|m| !d.members.contains(m)).count() as u32;
        }
        for m in &kept {
            if !d.members.contains(m) {
                ops.push(Operation::Leave {
                    connection: d.connection.clone(),
                    channel: d.channel.clone(),
                    client: (*m).clone(),
                });
            }
        }
        for m in &d.members {
            if !kept.contains(&m) {
                added += 1;
                ops.push(Operation::Enter {
                    connection: d.connection.clone(),
                    channel: d.channel.clone(),
                    client: m.clone(),
                });
            }
        }
    }
    (ops, added, removed)
}
