//! Leases: opening, extending, closing and expiring sessions, their
//! epochs and owners, and which lease a connection belongs to. The rules
//! are in the [module](super) docs.

use std::collections::HashSet;

use super::{Change, Lease, OccupancyState, Touched};
use crate::domain::ids::{ConnectionId, SessionId};
use crate::domain::ops::KeepAliveOutcome;

impl OccupancyState {
    /// The epoch of `session`'s live lease at `now`, if it has one.
    pub fn epoch(&self, now: u64, session: &SessionId) -> Option<u64> {
        self.sessions
            .get(session)
            .and_then(|t| self.leases.get(t))
            .filter(|l| l.deadline > now)
            .map(|l| l.epoch)
    }

    /// Extends `session`'s lease (to `ttl_ms` when given), or opens a new
    /// empty one and says the session was unknown.
    pub fn keep_alive(
        &mut self,
        now: u64,
        session: &SessionId,
        ttl_ms: Option<u64>,
        default_ttl_ms: u64,
        changes: &mut Vec<Change>,
    ) -> KeepAliveOutcome {
        self.keep_alive_as(now, session, "", ttl_ms, default_ttl_ms, 0, changes)
    }

    /// [`OccupancyState::keep_alive`] by `owner`: a live lease of another
    /// owner is left alone. A lease it opens takes the epoch `open_epoch`
    /// when that is not 0 (see [`Batch::open_epoch`](crate::domain::Batch::open_epoch)).
    #[allow(clippy::too_many_arguments)]
    pub fn keep_alive_as(
        &mut self,
        now: u64,
        session: &SessionId,
        owner: &str,
        ttl_ms: Option<u64>,
        default_ttl_ms: u64,
        open_epoch: u64,
        changes: &mut Vec<Change>,
    ) -> KeepAliveOutcome {
        self.expire(now, changes);
        if self.owner(session).is_some_and(|o| o != owner) {
            return KeepAliveOutcome::NotOwner;
        }
        let (token, fresh) = self.open(now, session, ttl_ms.unwrap_or(default_ttl_ms), owner, open_epoch);
        let lease = self.leases.get_mut(&token).expect("open returns a live lease");
        if let Some(ttl) = ttl_ms {
            lease.ttl_ms = ttl;
        }
        let ttl_ms = lease.ttl_ms;
        let old = lease.deadline;
        lease.deadline = now + ttl_ms;
        self.deadlines.remove(&(old, token));
        self.deadlines.insert((now + ttl_ms, token));
        let epoch = lease.epoch;
        if fresh {
            KeepAliveOutcome::Unknown { ttl_ms, epoch }
        } else {
            KeepAliveOutcome::Active { ttl_ms, epoch }
        }
    }

    /// Removes everything of `session` now; the epoch of the lease closed,
    /// or `None` when it had no live lease.
    pub fn close_session(&mut self, now: u64, session: &SessionId, changes: &mut Vec<Change>) -> Option<u64> {
        self.close_session_as(now, session, "", changes).unwrap_or(None)
    }

    /// The owner of `session`'s live lease (after expiring what ran out).
    pub(super) fn owner(&self, session: &SessionId) -> Option<&str> {
        self.sessions
            .get(session)
            .and_then(|t| self.leases.get(t))
            .map(|l| l.owner.as_str())
    }

    /// [`OccupancyState::close_session`] by `owner`: `Err(())` and nothing
    /// changed when another owner holds the session's live lease.
    #[allow(clippy::result_unit_err)]
    pub fn close_session_as(
        &mut self,
        now: u64,
        session: &SessionId,
        owner: &str,
        changes: &mut Vec<Change>,
    ) -> Result<Option<u64>, ()> {
        self.expire(now, changes);
        if self.owner(session).is_some_and(|o| o != owner) {
            return Err(());
        }
        Ok(self.close_inner(session, changes))
    }

    pub(super) fn close_inner(&mut self, session: &SessionId, changes: &mut Vec<Change>) -> Option<u64> {
        let token = self.sessions.get(session).copied()?;
        let epoch = self.leases.get(&token).map(|l| l.epoch);
        self.retire(token, changes);
        epoch
    }

    /// Removes every session whose lease ran out by `now`; returns how many.
    pub fn expire(&mut self, now: u64, changes: &mut Vec<Change>) -> usize {
        let mut n = 0;
        while let Some(&(deadline, token)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.retire(token, changes);
            n += 1;
        }
        n
    }

    /// The session's live lease, extended, or a new one (with the epoch
    /// `open_epoch`, or one of its own when that is 0); and whether it is
    /// new.
    pub(super) fn open(
        &mut self,
        now: u64,
        session: &SessionId,
        default_ttl_ms: u64,
        owner: &str,
        open_epoch: u64,
    ) -> (u64, bool) {
        if let Some(&token) = self.sessions.get(session) {
            let lease = self.leases.get_mut(&token).expect("session maps to a lease");
            let old = lease.deadline;
            lease.deadline = now + lease.ttl_ms;
            let new = lease.deadline;
            self.deadlines.remove(&(old, token));
            self.deadlines.insert((new, token));
            return (token, false);
        }
        self.next_token += 1;
        let token = self.next_token;
        self.sessions.insert(session.clone(), token);
        self.leases.insert(
            token,
            Lease {
                session: session.clone(),
                ttl_ms: default_ttl_ms,
                deadline: now + default_ttl_ms,
                conns: HashSet::new(),
                epoch: if open_epoch != 0 {
                    open_epoch
                } else {
                    mix(self.epoch_seed.wrapping_add(token)).max(1)
                },
                sequence: 0,
                owner: owner.to_string(),
            },
        );
        self.deadlines.insert((now + default_ttl_ms, token));
        (token, true)
    }

    pub(super) fn retire(&mut self, token: u64, changes: &mut Vec<Change>) {
        let Some(lease) = self.leases.remove(&token) else {
            return;
        };
        self.deadlines.remove(&(lease.deadline, token));
        if self.sessions.get(&lease.session) == Some(&token) {
            self.sessions.remove(&lease.session);
        }
        let mut touched = Touched::default();
        for conn in lease.conns {
            self.purge_conn(&conn, &mut touched);
        }
        self.report(touched, changes);
    }

    /// Makes `token` the owner of `conn` if the connection exists; returns
    /// whether it does.
    pub(super) fn claim(&mut self, token: u64, conn: &ConnectionId) -> bool {
        let Some(c) = self.conns.get_mut(conn) else {
            return false;
        };
        if c.token != token {
            let old = std::mem::replace(&mut c.token, token);
            if let Some(lease) = self.leases.get_mut(&old) {
                lease.conns.remove(conn);
            }
            if let Some(lease) = self.leases.get_mut(&token) {
                lease.conns.insert(conn.clone());
            }
        }
        true
    }
}

/// SplitMix64's finaliser: a bijection of `u64`, so distinct lease numbers
/// give distinct epochs.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
