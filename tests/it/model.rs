//! A reference model of occupancy in plain Rust, written independently of
//! the service's state machine: sessions, the connections they own, each
//! connection's channels with modes and presence members. Metrics are
//! computed by scanning everything, the slow obvious way.

use std::collections::{BTreeMap, BTreeSet};

pub const PUBLISH: u8 = 1;
pub const SUBSCRIBE: u8 = 2;
pub const PRESENCE: u8 = 4;
pub const PRESENCE_SUBSCRIBE: u8 = 8;
pub const OBJECT_PUBLISH: u8 = 16;
pub const OBJECT_SUBSCRIBE: u8 = 32;

/// One write, as the test sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Attach {
        conn: String,
        channel: String,
        modes: u8,
    },
    Detach {
        conn: String,
        channel: String,
    },
    Enter {
        conn: String,
        channel: String,
        client: String,
    },
    Leave {
        conn: String,
        channel: String,
        client: String,
    },
}

impl Op {
    /// `conn` attaching to `channel` with the mode bits `modes`.
    pub fn attach(conn: &str, channel: &str, modes: u8) -> Self {
        Op::Attach {
            conn: conn.into(),
            channel: channel.into(),
            modes,
        }
    }

    pub fn detach(conn: &str, channel: &str) -> Self {
        Op::Detach {
            conn: conn.into(),
            channel: channel.into(),
        }
    }

    pub fn enter(conn: &str, channel: &str, client: &str) -> Self {
        Op::Enter {
            conn: conn.into(),
            channel: channel.into(),
            client: client.into(),
        }
    }

    pub fn leave(conn: &str, channel: &str, client: &str) -> Self {
        Op::Leave {
            conn: conn.into(),
            channel: channel.into(),
            client: client.into(),
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Conn {
    session: String,
    channels: BTreeMap<String, (u8, BTreeSet<String>)>,
}

/// The model.
///
/// With the state split into partitions, each partition keeps its own
/// record of a connection (its attachments there), so a resume moves the
/// connection only in the partition of the channel written, and a record
/// is keyed by partition and connection. With one partition that is the
/// one record of one store.
#[derive(Debug, Default, Clone)]
pub struct Model {
    conns: BTreeMap<(u32, String), Conn>,
    partitions: u32,
}

impl Model {
    /// A model of state split into `partitions`.
    pub fn with_partitions(partitions: u32) -> Self {
        Self {
            conns: BTreeMap::new(),
            partitions,
        }
    }

    /// The partitions it models (1: one store).
    pub fn partitions(&self) -> u32 {
        self.partitions.max(1)
    }

    fn key(&self, conn: &str, channel: &str) -> (u32, String) {
        (
            occupancy::domain::partition::partition_of(channel, self.partitions()),
            conn.to_string(),
        )
    }

    /// Applies `op` written by `session`; false when it was refused
    /// (entering presence without presence mode).
    ///
    /// Ownership: an attach, or an enter that is accepted, moves the
    /// connection to the writer's session (a resume); a detach or leave of
    /// a connection another session owns changes nothing.
    pub fn apply(&mut self, session: &str, op: &Op) -> bool {
        let foreign = |m: &Self, key: &(u32, String)| m.conns.get(key).is_some_and(|c| c.session != session);
        match op {
            Op::Attach { conn, channel, modes } => {
                let key = self.key(conn, channel);
                let c = self.conns.entry(key).or_insert_with(|| Conn {
                    session: session.to_string(),
                    channels: BTreeMap::new(),
                });
                c.session = session.to_string();
                let entry = c.channels.entry(channel.clone()).or_insert((0, BTreeSet::new()));
                if modes & PRESENCE == 0 {
                    entry.1.clear();
                }
                entry.0 = *modes;
                true
            }
            Op::Detach { conn, channel } => {
                let key = self.key(conn, channel);
                if foreign(self, &key) {
                    return true;
                }
                if let Some(c) = self.conns.get_mut(&key) {
                    c.channels.remove(channel);
                    if c.channels.is_empty() {
                        self.conns.remove(&key);
                    }
                }
                true
            }
            Op::Enter { conn, channel, client } => match self.conns.get_mut(&self.key(conn, channel)) {
                Some(c) => match c.channels.get_mut(channel) {
                    Some((modes, members)) if *modes & PRESENCE != 0 => {
                        members.insert(client.clone());
                        c.session = session.to_string();
                        true
                    }
                    _ => false,
                },
                None => false,
            },
            Op::Leave { conn, channel, client } => {
                let key = self.key(conn, channel);
                if foreign(self, &key) {
                    return true;
                }
                if let Some((_, members)) = self.conns.get_mut(&key).and_then(|c| c.channels.get_mut(channel)) {
                    members.remove(client);
                }
                true
            }
        }
    }

    /// The session's lease ran out (or it was closed): everything it owns goes.
    pub fn expire(&mut self, session: &str) {
        self.conns.retain(|_, c| c.session != session);
    }

    /// What `session` holds: (connection, channel, modes, members).
    pub fn holdings(&self, session: &str) -> Vec<(String, String, u8, Vec<String>)> {
        let mut out = Vec::new();
        for ((_, id), c) in &self.conns {
            if c.session == session {
                for (ch, (modes, members)) in &c.channels {
                    out.push((id.clone(), ch.clone(), *modes, members.iter().cloned().collect()));
                }
            }
        }
        out.sort();
        out
    }

    /// Metrics in the fixture's order: connections, publishers,
    /// subscribers, presence_connections, presence_members,
    /// presence_subscribers, object_publishers, object_subscribers,
    /// presence_clients.
    pub fn metrics(&self, channel: &str) -> [u32; 9] {
        let mut m = [0u32; 9];
        let mut clients = BTreeSet::new();
        for c in self.conns.values() {
            if let Some((modes, members)) = c.channels.get(channel) {
                m[0] += 1;
                for (bit, slot) in [
                    (PUBLISH, 1),
                    (SUBSCRIBE, 2),
                    (PRESENCE, 3),
                    (PRESENCE_SUBSCRIBE, 5),
                    (OBJECT_PUBLISH, 6),
                    (OBJECT_SUBSCRIBE, 7),
                ] {
                    if modes & bit != 0 {
                        m[slot] += 1;
                    }
                }
                m[4] += members.len() as u32;
                clients.extend(members.iter().cloned());
            }
        }
        m[8] = clients.len() as u32;
        m
    }

    /// Active channels, in byte order.
    pub fn active(&self) -> Vec<String> {
        let set: BTreeSet<&String> = self.conns.values().flat_map(|c| c.channels.keys()).collect();
        set.into_iter().cloned().collect()
    }
}

#[test]
fn model_follows_the_rules() {
    let mut m = Model::default();
    assert!(!m.apply("s", &Op::enter("c", "x", "a")));
    m.apply("s", &Op::attach("c", "x", PRESENCE | PUBLISH));
    assert!(m.apply("s", &Op::enter("c", "x", "a")));
    m.apply("s", &Op::attach("d", "x", PRESENCE));
    m.apply("s", &Op::enter("d", "x", "a"));
    assert_eq!(m.metrics("x"), [2, 1, 0, 2, 2, 0, 0, 0, 1]);
    // resume moves c to t; expiring s leaves it
    m.apply("t", &Op::attach("c", "x", PRESENCE | PUBLISH));
    // a detach or leave from another session leaves d alone
    m.apply("t", &Op::detach("d", "x"));
    m.apply("t", &Op::leave("d", "x", "a"));
    assert_eq!(m.holdings("s").len(), 1, "d still belongs to s");
    m.expire("s");
    assert_eq!(m.metrics("x"), [1, 1, 0, 1, 1, 0, 0, 0, 1]);
    m.apply("t", &Op::attach("c", "x", SUBSCRIBE));
    assert_eq!(m.metrics("x"), [1, 0, 1, 0, 0, 0, 0, 0, 0]);
    m.apply("t", &Op::detach("c", "x"));
    assert!(m.active().is_empty());
}
