//! The session protocol without silent holes, on both stores: lease epochs
//! on every answer, sequences that belong to a lease, no lease from a
//! refused write, ownership that moves only by attach or enter, and the
//! stream's `live` and heartbeat messages. Each test is a hole that let
//! counts go wrong silently before; a front end following the documented
//! rule (an answer with another epoch means: SyncSession) ends exact.

use std::time::Duration;

use occupancy::proto::v1 as pb;
use pb::Mode;
use tonic::Code;

use crate::fixture::*;
use crate::model::{self, Model, Op};
use crate::support::sub::{m, req, subscribe};
use crate::support::{eventually, modes, Harness};

const TTL: Duration = Duration::from_millis(800);

all_stores!(
    a_write_after_the_lease_expired_is_noticed_by_its_epoch,
    a_refused_enter_opens_no_lease,
    a_foreign_detach_or_leave_moves_nothing,
    a_restarted_front_end_reusing_its_session_id_starts_its_sequences_again,
    a_batch_built_under_an_older_lease_never_applies,
    sequence_zero_applies_and_leaves_the_recorded_sequence,
    the_epoch_stays_the_same_through_ordinary_operation_on_three_replicas,
    a_resumed_quiet_stream_says_it_is_live_before_any_heartbeat,
    a_quiet_stream_gets_heartbeats,
);

/// Mode bits of the reference model for proto modes.
pub fn bits(m: &[Mode]) -> u8 {
    m.iter()
        .map(|m| match m {
            Mode::Publish => model::PUBLISH,
            Mode::Subscribe => model::SUBSCRIBE,
            Mode::Presence => model::PRESENCE,
            Mode::PresenceSubscribe => model::PRESENCE_SUBSCRIBE,
            Mode::ObjectPublish => model::OBJECT_PUBLISH,
            Mode::ObjectSubscribe => model::OBJECT_SUBSCRIBE,
            Mode::Unspecified => 0,
        })
        .fold(0, |a, b| a | b)
}

/// A front end that follows the documented rule: it keeps its own copy of
/// what it holds, remembers the epoch of its last SyncSession (or first
/// answer), and sends SyncSession whenever an answer carries another one
/// (or KeepAlive says UNKNOWN).
pub struct FrontEnd {
    pub fx: Fx,
    pub session: String,
    pub model: Model,
    pub epoch: u64,
    pub syncs: usize,
}

impl FrontEnd {
    pub fn new(fx: Fx, session: &str) -> Self {
        Self {
            fx,
            session: session.to_string(),
            model: Model::default(),
            epoch: 0,
            syncs: 0,
        }
    }

    /// The rule, for an answer's epoch.
    pub async fn observe(&mut self, epoch: u64) {
        if self.epoch == 0 {
            self.epoch = epoch;
        } else if epoch != self.epoch {
            self.sync().await;
        }
    }

    pub async fn sync(&mut self) {
        let r = self
            .fx
            .w
            .clone()
            .sync_session(pb::SyncSessionRequest {
                session_id: self.session.clone(),
                attachments: crate::support::wire::holdings(&self.model.holdings(&self.session)),
                ttl_ms: 0,
            })
            .await
            .expect("sync")
            .into_inner();
        assert_ne!(r.session_epoch, 0, "a synced session has a lease");
        self.epoch = r.session_epoch;
        self.syncs += 1;
    }

    pub async fn attach(&mut self, conn: &str, channel: &str, m: &[Mode]) -> u64 {
        self.model.apply(&self.session, &Op::attach(conn, channel, bits(m)));
        let r = self
            .fx
            .w
            .clone()
            .attach(pb::AttachRequest {
                session_id: self.session.clone(),
                connection_id: conn.into(),
                channel: channel.into(),
                modes: modes(m),
            })
            .await
            .expect("attach")
            .into_inner();
        self.observe(r.session_epoch).await;
        r.session_epoch
    }

    pub async fn enter(&mut self, conn: &str, channel: &str, client: &str) -> u64 {
        self.model.apply(&self.session, &Op::enter(conn, channel, client));
        let r = self
            .fx
            .w
            .clone()
            .enter_presence(pb::EnterPresenceRequest {
                session_id: self.session.clone(),
                connection_id: conn.into(),
                channel: channel.into(),
                client_id: client.into(),
            })
            .await
            .expect("enter")
            .into_inner();
        self.observe(r.session_epoch).await;
        r.session_epoch
    }

    /// A KeepAlive whose answer arrives, with the rule applied.
    pub async fn keep_alive(&mut self) -> pb::KeepAliveResponse {
        let r = self.fx.keep_alive(&self.session, 0).await;
        if r.status == pb::SessionStatus::Unknown as i32 && self.epoch != 0 {
            self.sync().await;
        } else {
            self.observe(r.session_epoch).await;
        }
        r
    }
}

async fn apply_seq(
    fx: &Fx,
    session: &str,
    sequence: u64,
    epoch: u64,
    ops: Vec<pb::operation::Op>,
) -> pb::ApplyResponse {
    fx.send(pb::ApplyRequest {
        sequence,
        session_epoch: epoch,
        ..batch(session, ops)
    })
    .await
}

/// Lease expiry, then a write first: before, the write opened a fresh
/// lease that the next KeepAlive called ACTIVE, and the expired state was
/// gone for good.
async fn a_write_after_the_lease_expired_is_noticed_by_its_epoch(h: Harness) {
    let s = h.server().await;
    let mut fe = FrontEnd::new(Fx::new(&s).await, "fe");
    let first = fe.attach("c1", "room", &[Mode::Presence]).await;
    assert_ne!(first, 0, "a write that holds something opens a lease with an epoch");
    fe.enter("c1", "room", "alice").await;
    assert_eq!(fe.epoch, first, "the same lease");
    // the front end stalls past its lease (a long GC pause, say)
    eventually(h.expiry_wait(), "the lease to expire", || async {
        (fe.fx.get("room").await == [0; 9]).then_some(())
    })
    .await;
    // its next call is a write, not a KeepAlive
    let second = fe.attach("c2", "room", &[]).await;
    assert_ne!(second, first, "a lease opened afresh has a new epoch");
    assert_eq!(fe.syncs, 1, "the front end noticed and re-sent its state");
    assert_eq!(fe.fx.get("room").await, fe.model.metrics("room"));
    assert_eq!(fe.fx.get("room").await, [2, 0, 0, 1, 1, 0, 0, 0, 1]);
    // and the next KeepAlive is a plain ACTIVE in the synced lease
    let r = fe.keep_alive().await;
    assert_eq!(r.status, pb::SessionStatus::Active as i32);
    assert_eq!(r.session_epoch, fe.epoch);
    assert_eq!(fe.syncs, 1);
}

/// An EnterPresence refused on an unknown session used to leave a lease
/// behind; a refused or empty write opens none and answers epoch 0.
async fn a_refused_enter_opens_no_lease(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    let e = fx.try_enter("fe", "c1", "room", "alice").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    // the same in a batch, and an empty write (detach of nothing)
    let r = apply_seq(
        &fx,
        "fe",
        7,
        0,
        vec![enter_op("c1", "room", "alice"), detach_op("c9", "x")],
    )
    .await;
    assert_eq!(r.session_epoch, 0, "no lease: {r:?}");
    assert_eq!(r.results[0].status, pb::OperationStatus::FailedPrecondition as i32);
    // nothing was opened: the KeepAlive finds the session unknown
    let k = fx.keep_alive("fe", 0).await;
    assert_eq!(
        k.status,
        pb::SessionStatus::Unknown as i32,
        "a refused write opened a lease"
    );
    // and the refused batch's sequence was not recorded anywhere
    assert!(
        !apply_seq(&fx, "fe", 7, 0, vec![attach_op("c1", "room", &[])])
            .await
            .already_applied
    );
    assert!(fx.close("fe").await);
    assert_eq!(fx.get("room").await, [0; 9]);
}

/// Session B's Detach of a channel that c1 (owned by A) is not attached
/// to used to move c1, whole, to B; closing A then left it counted.
async fn a_foreign_detach_or_leave_moves_nothing(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    fx.attach("fe-a", "c1", "room", &[Mode::Presence]).await;
    fx.enter("fe-a", "c1", "room", "alice").await;
    fx.keep_alive("fe-b", 60_000).await;
    // B names c1 in a detach and a leave, of channels c1 is not on and is
    fx.detach("fe-b", "c1", "elsewhere").await;
    fx.leave("fe-b", "c1", "room", "alice").await;
    fx.detach("fe-b", "c1", "room").await;
    assert_eq!(
        fx.get("room").await,
        [1, 0, 0, 1, 1, 0, 0, 0, 1],
        "B changed A's connection"
    );
    // closing A removes c1: it never moved
    assert!(fx.close("fe-a").await);
    assert_eq!(fx.get("room").await, [0; 9]);
    // closing B finds nothing of c1 to remove (and nothing left behind)
    assert!(fx.close("fe-b").await);
    assert!(fx.list_all("", 10).await.is_empty());
    // an attach (the resume case) does move it
    fx.attach("fe-a", "c2", "room", &[Mode::Presence]).await;
    fx.keep_alive("fe-b", 60_000).await;
    fx.attach("fe-b", "c2", "room", &[Mode::Presence]).await;
    assert!(fx.close("fe-a").await);
    assert_eq!(fx.get("room").await[0], 1, "moved to B by its attach");
    assert!(fx.close("fe-b").await);
    assert_eq!(fx.get("room").await, [0; 9]);
}

/// After CloseSession, a front end restarted with the same session id and
/// a fresh counter used to get `already_applied` for every batch below the
/// old maximum, its writes silently dropped.
async fn a_restarted_front_end_reusing_its_session_id_starts_its_sequences_again(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    for seq in [100, 101] {
        let r = apply_seq(&fx, "fe", seq, 0, vec![attach_op(&format!("c{seq}"), "room", &[])]).await;
        assert!(!r.already_applied);
    }
    assert!(fx.close("fe").await);
    // the restarted front end counts from 1 again
    for seq in 1..=3u64 {
        let r = apply_seq(&fx, "fe", seq, 0, vec![attach_op(&format!("n{seq}"), "room", &[])]).await;
        assert!(!r.already_applied, "batch {seq} of a new lease was dropped");
    }
    assert_eq!(fx.get("room").await[0], 3);
    // within the new lease, sequences still apply once
    assert!(
        apply_seq(&fx, "fe", 2, 0, vec![detach_op("n1", "room")])
            .await
            .already_applied
    );
    assert_eq!(fx.get("room").await[0], 3);
    assert!(fx.close("fe").await);
}

/// A batch that names the epoch it was built under never applies to
/// another lease, and does not open one.
async fn a_batch_built_under_an_older_lease_never_applies(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    let r = apply_seq(&fx, "fe", 1, 0, vec![attach_op("c1", "room", &[])]).await;
    let old = r.session_epoch;
    assert_ne!(old, 0);
    // with the right epoch it applies
    let r = apply_seq(&fx, "fe", 2, old, vec![attach_op("c2", "room", &[])]).await;
    assert!(!r.epoch_mismatch && !r.already_applied);
    assert_eq!(r.session_epoch, old);
    assert!(fx.close("fe").await);
    // a delayed batch of the closed lease: refused, nothing opened
    let r = apply_seq(&fx, "fe", 3, old, vec![attach_op("c3", "room", &[])]).await;
    assert!(r.epoch_mismatch && r.results.is_empty(), "{r:?}");
    assert_eq!(r.session_epoch, 0);
    assert_eq!(fx.get("room").await, [0; 9]);
    assert_eq!(fx.keep_alive("fe", 0).await.status, pb::SessionStatus::Unknown as i32);
    // and against the new lease it is refused too, naming the new epoch
    let new = fx.keep_alive("fe", 0).await.session_epoch;
    assert_ne!(new, old, "epochs never repeat");
    let r = apply_seq(&fx, "fe", 4, old, vec![attach_op("c3", "room", &[])]).await;
    assert!(r.epoch_mismatch);
    assert_eq!(r.session_epoch, new);
    assert_eq!(fx.get("room").await, [0; 9]);
    assert!(fx.close("fe").await);
}

/// Sequence 0 always applies and leaves the recorded sequence alone.
async fn sequence_zero_applies_and_leaves_the_recorded_sequence(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    assert!(
        !apply_seq(&fx, "fe", 5, 0, vec![attach_op("c1", "room", &[])])
            .await
            .already_applied
    );
    assert!(
        !apply_seq(&fx, "fe", 0, 0, vec![attach_op("c2", "room", &[])])
            .await
            .already_applied
    );
    assert!(
        !apply_seq(&fx, "fe", 0, 0, vec![attach_op("c3", "room", &[])])
            .await
            .already_applied
    );
    assert!(
        apply_seq(&fx, "fe", 5, 0, vec![attach_op("c4", "room", &[])])
            .await
            .already_applied
    );
    assert!(
        !apply_seq(&fx, "fe", 6, 0, vec![attach_op("c5", "room", &[])])
            .await
            .already_applied
    );
    assert_eq!(fx.get("room").await[0], 4);
    assert!(fx.close("fe").await);
}

/// No false alarms: 1,000 writes and KeepAlives spread over three
/// replicas all answer one epoch.
async fn the_epoch_stays_the_same_through_ordinary_operation_on_three_replicas(h: Harness) {
    let servers = futures::future::join_all((0..3).map(|_| h.server())).await;
    let mut fxs = Vec::new();
    for s in &servers {
        fxs.push(Fx::new(s).await);
    }
    let mut epochs = std::collections::BTreeSet::new();
    epochs.insert(fxs[0].keep_alive("fe", 60_000).await.session_epoch);
    for i in 0..1_000usize {
        let fx = &fxs[i % 3];
        let conn = format!("c{}", i % 20);
        let epoch = match i % 5 {
            0 => fx.keep_alive("fe", 0).await.session_epoch,
            1 | 2 => {
                let mut w = fx.w.clone();
                let r = w.attach(pb::AttachRequest {
                    session_id: "fe".into(),
                    connection_id: conn,
                    channel: format!("ch{}", i % 7),
                    modes: modes(&[Mode::Presence]),
                });
                r.await.expect("attach").into_inner().session_epoch
            }
            3 => {
                let mut w = fx.w.clone();
                let r = w.detach(pb::DetachRequest {
                    session_id: "fe".into(),
                    connection_id: conn,
                    channel: format!("ch{}", (i + 3) % 7),
                });
                r.await.expect("detach").into_inner().session_epoch
            }
            _ => {
                apply_seq(fx, "fe", i as u64, 0, vec![attach_op(&conn, "batch", &[])])
                    .await
                    .session_epoch
            }
        };
        epochs.insert(epoch);
    }
    assert_eq!(epochs.len(), 1, "epochs seen: {epochs:?}");
    assert!(!epochs.contains(&0));
}

/// A subscription resumed with nothing new used to send nothing at all,
/// so a client could not tell a live stream from a stalled one. `live`
/// comes as soon as the stream has caught up, long before any heartbeat.
async fn a_resumed_quiet_stream_says_it_is_live_before_any_heartbeat(h: Harness) {
    let mut config = h.config();
    config.stream_heartbeat = Duration::from_secs(600);
    let s = crate::support::TestServer::start(config, h.store()).await;
    let fx = Fx::new(&s).await;
    fx.keep_alive("fe", 60_000).await;
    fx.attach("fe", "c1", "room", &[Mode::Subscribe]).await;
    let mut sub = subscribe(&s, req(&["room"])).await.unwrap();
    // the snapshot, then `live`
    let snap = sub.next().await;
    assert_eq!(m(&snap)[0], 1);
    let live = sub
        .message_within(Duration::from_secs(30))
        .await
        .expect("a message")
        .unwrap();
    assert!(live.live.is_some() && live.event.is_none(), "{live:?}");
    drop(sub);
    // resume from the snapshot's id, nothing changed since
    let mut r = req(&["room"]);
    r.resume_from = snap.id.clone();
    let mut sub = subscribe(&s, r).await.unwrap();
    let first = sub
        .message_within(Duration::from_secs(30))
        .await
        .expect("a first message, with no heartbeat due for ten minutes")
        .unwrap();
    assert!(first.live.is_some(), "the first message says live: {first:?}");
    assert!(first.live.unwrap().timestamp_ms > 0);
    // and changes follow
    fx.attach("fe", "c2", "room", &[]).await;
    assert_eq!(m(&sub.next().await)[0], 2);
}

/// A quiet stream sends heartbeats at the configured interval, and events
/// as before.
async fn a_quiet_stream_gets_heartbeats(h: Harness) {
    let mut config = h.config();
    config.stream_heartbeat = Duration::from_millis(200);
    let s = crate::support::TestServer::start(config, h.store()).await;
    let fx = Fx::new(&s).await;
    let mut sub = subscribe(&s, req(&["room"])).await.unwrap();
    assert_eq!(m(&sub.next().await), [0; 9]);
    let mut beats = 0;
    for _ in 0..3 {
        let msg = sub
            .message_within(Duration::from_secs(2))
            .await
            .expect("a message while quiet")
            .unwrap();
        assert!(msg.event.is_none(), "nothing changed: {msg:?}");
        if msg.heartbeat.is_some() {
            beats += 1;
        }
    }
    assert!(beats >= 2, "{beats} heartbeats");
    fx.attach("fe", "c1", "room", &[]).await;
    assert_eq!(m(&sub.next().await)[0], 1);
    assert!(fx.close("fe").await);
}
