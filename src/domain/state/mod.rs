//! The occupancy rules as a pure state machine: sessions (leases),
//! connections, attachments, presence members and the counts they feed.
//!
//! Time is passed in as milliseconds, so the rules can be tested without a
//! clock. The in-memory store is this machine behind a mutex; the Redis
//! store implements the same rules in Lua (`store/redis/lua/`), and both
//! pass one conformance suite.
//!
//! Ownership: a connection belongs to the session that attached it. An
//! Attach, or an Enter that applies, naming a connection owned by another
//! live session moves the whole connection (every attachment and presence
//! member) to the writer's session (a resume on another front end), so the
//! old session's expiry leaves it be. Detach and Leave never move a
//! connection: naming one another session owns, they change nothing.
//!
//! Owners: a lease records who opened it (the credential's key id, ""
//! with access control off). A write, KeepAlive or close by anyone else
//! changes nothing, and neither does a write whose attach or enter would
//! move a connection out of a live lease of another owner.
//!
//! Leases: a write opens a lease only when the session holds something
//! after it (a refused or empty write leaves no lease behind). Each lease
//! has an epoch that never repeats (a bijective mix of the lease's number
//! and a seed chosen when the state is made, unless the write or KeepAlive
//! that opens it gives one: `Batch::open_epoch`), and its own batch
//! sequence: a new lease accepts any sequence.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::ids::{ChannelName, ClientId, ConnectionId, SessionId};
use super::list::{busy_key, encode_cursor, name_of_busy_key, ListOrder, ListPage, ListQuery, ListedChannel};
use super::metrics::{Metrics, Totals};
use super::mode::{Mode, ModeSet};
use super::ops::{Applied, Batch, HeldAttachment, OpResult, OpStatus, Operation};

mod leases;

/// A channel whose metrics changed in one atomic step, with its metrics
/// after the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The channel.
    pub channel: ChannelName,
    /// Its metrics after the step.
    pub metrics: Metrics,
}

#[derive(Debug)]
struct Lease {
    session: SessionId,
    ttl_ms: u64,
    deadline: u64,
    conns: HashSet<ConnectionId>,
    epoch: u64,
    /// Last batch sequence applied in this lease (0: none).
    sequence: u64,
    /// Who opened it.
    owner: String,
}

#[derive(Debug)]
struct Conn {
    token: u64,
    channels: HashMap<ChannelName, Attachment>,
}

#[derive(Debug, Default)]
struct Attachment {
    modes: ModeSet,
    members: BTreeSet<ClientId>,
}

#[derive(Debug, Default)]
struct Chan {
    metrics: Metrics,
    clients: HashMap<ClientId, u32>,
}

/// The whole occupancy state of one deployment.
#[derive(Debug, Default)]
pub struct OccupancyState {
    sessions: HashMap<SessionId, u64>,
    leases: HashMap<u64, Lease>,
    deadlines: BTreeSet<(u64, u64)>,
    conns: HashMap<ConnectionId, Conn>,
    channels: HashMap<ChannelName, Chan>,
    by_name: BTreeSet<String>,
    by_busy: BTreeSet<String>,
    next_token: u64,
    /// Mixed into every lease's epoch, so that epochs of two states (a
    /// process before and after a restart) do not repeat.
    epoch_seed: u64,
    /// Sums of every channel's connections and presence members, kept as
    /// the channels change.
    total_connections: u64,
    total_members: u64,
}

/// Collects the channels touched by one atomic step and reports each once.
#[derive(Default)]
struct Touched(BTreeMap<ChannelName, ()>);

impl OccupancyState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty state whose lease epochs are derived from `seed` (pick it
    /// at random, so that a restarted process does not repeat epochs).
    pub fn with_seed(seed: u64) -> Self {
        Self {
            epoch_seed: seed,
            ..Self::default()
        }
    }

    /// The metrics of `channel` (all zero when it is not active).
    pub fn metrics(&self, channel: &ChannelName) -> Metrics {
        self.channels.get(channel).map(|c| c.metrics).unwrap_or_default()
    }

    /// Everything `session` holds while its lease is alive at `now`,
    /// sorted; empty for an unknown or expired session.
    pub fn session_state(&self, now: u64, session: &SessionId) -> Vec<HeldAttachment> {
        let Some(lease) = self
            .sessions
            .get(session)
            .and_then(|t| self.leases.get(t))
            .filter(|l| l.deadline > now)
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for conn in &lease.conns {
            if let Some(c) = self.conns.get(conn) {
                for (channel, a) in &c.channels {
                    out.push(HeldAttachment {
                        connection: conn.clone(),
                        channel: channel.clone(),
                        modes: a.modes,
                        members: a.members.iter().cloned().collect(),
                    });
                }
            }
        }
        out.sort();
        out
    }

    /// App-wide totals; every figure is kept up to date by the changes
    /// themselves, so this costs the same whatever the state's size.
    pub fn totals(&self) -> Totals {
        Totals {
            active_channels: self.by_name.len() as u64,
            connections: self.total_connections,
            presence_members: self.total_members,
            sessions: self.sessions.len() as u64,
        }
    }

    /// Applies a write of `session`: checks its epoch and sequence against
    /// the session's live lease, then applies its operations in order,
    /// extending the lease, or opening one with `default_ttl_ms` when the
    /// session has none and the write leaves it holding something.
    pub fn apply(
        &mut self,
        now: u64,
        session: &SessionId,
        default_ttl_ms: u64,
        batch: Batch<'_>,
        changes: &mut Vec<Change>,
    ) -> Applied {
        self.expire(now, changes);
        let live = self.sessions.get(session).and_then(|t| self.leases.get(t));
        let current = live.map_or(0, |l| l.epoch);
        if batch.epoch != 0 && batch.epoch != current {
            return Applied::WrongEpoch { epoch: current };
        }
        if live.is_some_and(|l| l.owner != batch.owner) {
            return Applied::NotOwner { connection: false };
        }
        // an attach or enter would move a connection of another owner's
        // live lease: refused whole, before anything changes
        let mine = self.sessions.get(session).copied();
        let foreign = batch.ops.iter().any(|op| {
            matches!(op, Operation::Attach { .. } | Operation::Enter { .. })
                && self.conns.get(op.connection()).is_some_and(|c| {
                    Some(c.token) != mine && self.leases.get(&c.token).is_some_and(|l| l.owner != batch.owner)
                })
        });
        if foreign {
            return Applied::NotOwner { connection: true };
        }
        if batch.sequence > 0 && live.is_some_and(|l| batch.sequence <= l.sequence) {
            return Applied::Stale { epoch: current };
        }
        let (token, fresh) = self.open(now, session, default_ttl_ms, batch.owner, batch.open_epoch);
        let mut touched = Touched::default();
        let mut results = Vec::with_capacity(batch.ops.len());
        for op in batch.ops {
            let status = self.apply_one(token, op, &mut touched);
            let metrics = batch.include_metrics.then(|| self.metrics(op.channel()));
            results.push(OpResult { status, metrics });
        }
        self.report(touched, changes);
        let lease = self.leases.get_mut(&token).expect("open returns a live lease");
        if fresh && lease.conns.is_empty() {
            // the write left the session holding nothing: no lease
            let lease = self.leases.remove(&token).expect("checked above");
            self.deadlines.remove(&(lease.deadline, token));
            self.sessions.remove(session);
            return Applied::Done { results, epoch: 0 };
        }
        if batch.sequence > 0 {
            lease.sequence = batch.sequence;
        }
        Applied::Done {
            results,
            epoch: lease.epoch,
        }
    }

    /// One page of active channels.
    pub fn list(&self, q: &ListQuery) -> ListPage {
        let limit = q.limit as usize;
        let mut keys: Vec<&String> = Vec::with_capacity(limit + 1);
        match q.order {
            ListOrder::Name => {
                let (start, inclusive) = q.name_start();
                let lower = if inclusive {
                    std::ops::Bound::Included(start)
                } else {
                    std::ops::Bound::Excluded(start)
                };
                for k in self.by_name.range((lower, std::ops::Bound::Unbounded)) {
                    if !q.matches(k) || keys.len() > limit {
                        break;
                    }
                    keys.push(k);
                }
            }
            ListOrder::ConnectionsDesc => {
                let lower = match &q.after {
                    Some(a) => std::ops::Bound::Excluded(a.clone()),
                    None => std::ops::Bound::Unbounded,
                };
                for k in self.by_busy.range((lower, std::ops::Bound::Unbounded)) {
                    if keys.len() > limit {
                        break;
                    }
                    if q.matches(name_of_busy_key(k)) {
                        keys.push(k);
                    }
                }
            }
        }
        let more = keys.len() > limit;
        keys.truncate(limit);
        let next_cursor = if more {
            keys.last().map(|k| encode_cursor(q.order, k))
        } else {
            None
        };
        let channels = keys
            .into_iter()
            .map(|k| {
                let name = match q.order {
                    ListOrder::Name => k.as_str(),
                    ListOrder::ConnectionsDesc => name_of_busy_key(k),
                };
                let name = ChannelName::parse("channel", name).expect("indexed names are valid");
                let metrics = q.with_metrics.then(|| self.metrics(&name));
                ListedChannel { name, metrics }
            })
            .collect();
        ListPage { channels, next_cursor }
    }

    fn report(&self, touched: Touched, changes: &mut Vec<Change>) {
        for (channel, ()) in touched.0 {
            let metrics = self.metrics(&channel);
            changes.push(Change { channel, metrics });
        }
    }

    fn apply_one(&mut self, token: u64, op: &Operation, touched: &mut Touched) -> OpStatus {
        // None: no such connection; Some(false): another session owns it
        let owned = self.conns.get(op.connection()).map(|c| c.token == token);
        match op {
            Operation::Attach {
                connection,
                channel,
                modes,
            } => {
                if owned.is_some()
                    && !self.conns[connection].channels.contains_key(channel)
                    && self.conns[connection].channels.len() >= super::ops::MAX_CHANNELS_PER_CONNECTION
                {
                    return OpStatus::TooManyChannels;
                }
                if !self.claim(token, connection) {
                    self.conns.insert(
                        connection.clone(),
                        Conn {
                            token,
                            channels: HashMap::new(),
                        },
                    );
                    if let Some(lease) = self.leases.get_mut(&token) {
                        lease.conns.insert(connection.clone());
                    }
                }
                self.attach(connection, channel, *modes, touched);
                OpStatus::Ok
            }
            Operation::Detach { connection, channel } => {
                if owned == Some(true) {
                    self.detach(connection, channel, touched);
                    self.drop_conn_if_empty(connection);
                }
                OpStatus::Ok
            }
            Operation::Enter {
                connection,
                channel,
                client,
            } => {
                let attached = owned.is_some()
                    && self.conns[connection]
                        .channels
                        .get(channel)
                        .is_some_and(|a| a.modes.contains(Mode::Presence));
                if !attached {
                    return OpStatus::NotPresenceAttached;
                }
                self.claim(token, connection);
                self.enter(connection, channel, client, touched);
                OpStatus::Ok
            }
            Operation::Leave {
                connection,
                channel,
                client,
            } => {
                if owned == Some(true) {
                    self.leave(connection, channel, client, touched);
                }
                OpStatus::Ok
            }
        }
    }

    fn attach(&mut self, conn: &ConnectionId, channel: &ChannelName, modes: ModeSet, touched: &mut Touched) {
        let c = self.conns.get_mut(conn).expect("attach on an existing connection");
        let old = c.channels.get(channel).map(|a| a.modes);
        if old == Some(modes) {
            return;
        }
        let dropped_members: Vec<ClientId> = match (old, modes.contains(Mode::Presence)) {
            (Some(o), false) if o.contains(Mode::Presence) => c.channels[channel].members.iter().cloned().collect(),
            _ => Vec::new(),
        };
        for client in &dropped_members {
            self.leave(conn, channel, client, touched);
        }
        let c = self.conns.get_mut(conn).expect("still there");
        c.channels.entry(channel.clone()).or_default().modes = modes;
        let before = self.metrics(channel);
        let chan = self.channels.entry(channel.clone()).or_default();
        if let Some(o) = old {
            chan.metrics.add_connection(o, -1);
        }
        chan.metrics.add_connection(modes, 1);
        let after = chan.metrics;
        self.reindex(channel, before, after);
        touched.0.insert(channel.clone(), ());
    }

    fn detach(&mut self, conn: &ConnectionId, channel: &ChannelName, touched: &mut Touched) {
        let Some(att) = self.conns.get(conn).and_then(|c| c.channels.get(channel)) else {
            return;
        };
        let members: Vec<ClientId> = att.members.iter().cloned().collect();
        for client in &members {
            self.leave(conn, channel, client, touched);
        }
        let c = self.conns.get_mut(conn).expect("checked above");
        let att = c.channels.remove(channel).expect("checked above");
        let before = self.metrics(channel);
        let chan = self.channels.get_mut(channel).expect("attached channel exists");
        chan.metrics.add_connection(att.modes, -1);
        let after = chan.metrics;
        if after.connections == 0 {
            self.channels.remove(channel);
        }
        self.reindex(channel, before, after);
        touched.0.insert(channel.clone(), ());
    }

    fn enter(&mut self, conn: &ConnectionId, channel: &ChannelName, client: &ClientId, touched: &mut Touched) {
        let att = self
            .conns
            .get_mut(conn)
            .and_then(|c| c.channels.get_mut(channel))
            .expect("caller checked the attachment");
        if !att.members.insert(client.clone()) {
            return;
        }
        let chan = self.channels.get_mut(channel).expect("attached channel exists");
        chan.metrics.presence_members += 1;
        self.total_members += 1;
        let n = chan.clients.entry(client.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            chan.metrics.presence_clients += 1;
        }
        touched.0.insert(channel.clone(), ());
    }

    fn leave(&mut self, conn: &ConnectionId, channel: &ChannelName, client: &ClientId, touched: &mut Touched) {
        let Some(att) = self.conns.get_mut(conn).and_then(|c| c.channels.get_mut(channel)) else {
            return;
        };
        if !att.members.remove(client) {
            return;
        }
        let chan = self.channels.get_mut(channel).expect("attached channel exists");
        chan.metrics.presence_members -= 1;
        self.total_members -= 1;
        if let Some(n) = chan.clients.get_mut(client) {
            *n -= 1;
            if *n == 0 {
                chan.clients.remove(client);
                chan.metrics.presence_clients -= 1;
            }
        }
        touched.0.insert(channel.clone(), ());
    }

    fn purge_conn(&mut self, conn: &ConnectionId, touched: &mut Touched) {
        let channels: Vec<ChannelName> = match self.conns.get(conn) {
            Some(c) => c.channels.keys().cloned().collect(),
            None => return,
        };
        for channel in channels {
            self.detach(conn, &channel, touched);
        }
        self.conns.remove(conn);
    }

    fn drop_conn_if_empty(&mut self, conn: &ConnectionId) {
        if let Some(c) = self.conns.get(conn) {
            if c.channels.is_empty() {
                let token = c.token;
                self.conns.remove(conn);
                if let Some(lease) = self.leases.get_mut(&token) {
                    lease.conns.remove(conn);
                }
            }
        }
    }

    /// Follows a change of a channel's connection count in the indexes and
    /// the totals.
    fn reindex(&mut self, channel: &ChannelName, before: Metrics, after: Metrics) {
        if before.connections == after.connections {
            return;
        }
        self.total_connections =
            (self.total_connections + u64::from(after.connections)).saturating_sub(u64::from(before.connections));
        if before.connections > 0 {
            self.by_busy.remove(&busy_key(before.connections, channel.as_str()));
        }
        if after.connections > 0 {
            self.by_busy.insert(busy_key(after.connections, channel.as_str()));
            self.by_name.insert(channel.as_str().to_string());
        } else {
            self.by_name.remove(channel.as_str());
        }
    }
}
