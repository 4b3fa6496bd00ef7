//! Session leases: expiry with two replicas reaping, resume on another
//! session, KeepAlive and CloseSession.

use occupancy::proto::v1 as pb;
use pb::Mode;

use super::{LONG_TTL_MS, TTL};
use crate::fixture::*;
use crate::support::{eventually, Harness};

all_stores!(
    expiry_removes_everything_once_with_two_replicas,
    resume_moves_connection_to_new_session,
    keep_alive_and_close_session,
    a_lease_opened_with_a_given_epoch_carries_it,
);

async fn expiry_removes_everything_once_with_two_replicas(h: Harness) {
    // two replicas, each reaping every 50 ms, over one store
    let a = h.server().await;
    let b = h.server().await;
    let fa = Fx::new(&a).await;
    let fb = Fx::new(&b).await;
    // a long-lived session whose counts must stay exact
    fa.keep_alive("keeper", LONG_TTL_MS).await;
    fa.attach("keeper", "k1", "shared", &[Mode::Presence, Mode::Publish])
        .await;
    fa.enter("keeper", "k1", "shared", "kate").await;
    let kept = fa.get("shared").await;
    // twenty short sessions spread over both replicas, with presence
    for i in 0..20 {
        let fx = if i % 2 == 0 { &fa } else { &fb };
        let session = format!("short-{i}");
        let mut ops = Vec::new();
        for j in 0..10 {
            let conn = format!("s{i}-c{j}");
            ops.push(attach_op(&conn, "shared", &[Mode::Presence, Mode::Subscribe]));
            ops.push(enter_op(&conn, "shared", &format!("user{j}")));
            ops.push(attach_op(&conn, &format!("own-{i}"), &[Mode::Publish]));
        }
        assert!(fx
            .apply(&session, ops)
            .await
            .iter()
            .all(|r| r.status == pb::OperationStatus::Ok as i32));
    }
    assert_eq!(fa.get("shared").await, [201, 1, 200, 201, 201, 0, 0, 0, 11]);
    // keep the keeper alive while the short leases run out
    eventually(h.expiry_wait(), "short sessions to expire", || async {
        fb.keep_alive("keeper", LONG_TTL_MS).await;
        let n = fb.list_all("own-", 100).await.len();
        (n == 0 && fb.get("shared").await[0] == 1).then_some(())
    })
    .await;
    assert_eq!(fa.get("shared").await, kept, "exactly the keeper's counts are left");
    assert_eq!(fb.get("shared").await, kept);
    assert_eq!(fa.list_all("", 100).await, ["shared"]);
    for i in 0..20 {
        assert_eq!(fa.get(&format!("own-{i}")).await, [0; 9]);
        let r = fa.keep_alive(&format!("short-{i}"), 0).await;
        assert_eq!(r.status, pb::SessionStatus::Unknown as i32, "short-{i} expired");
    }
    if let crate::support::Backend::Redis(r) = &h.backend {
        // nothing of the expired sessions is left in Redis
        let mut c = r.connection();
        let conns: Vec<String> = ::redis::cmd("HKEYS").arg("test:conns").query(&mut c).unwrap();
        assert_eq!(conns, ["k1"]);
        let sets: Vec<String> = ::redis::cmd("KEYS").arg("test:tok:*:conns").query(&mut c).unwrap();
        assert_eq!(sets.len(), 1, "only the keeper's connections are left: {sets:?}");
        let reaping: usize = ::redis::cmd("SCARD").arg("test:reaping").query(&mut c).unwrap();
        assert_eq!(reaping, 0);
    }
}

/// A connection attached anew by another session moves to it with all its
/// attachments in the partitions the attach touches (with one partition:
/// all of them); in other partitions its attachments stay with the old
/// session and end with it (see `store::partitioned`).
async fn resume_moves_connection_to_new_session(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    let (names, elsewhere) = h.names_in_one_partition("ch", 3);
    let (x, y, marker) = (&names[0], &names[1], &names[2]);
    // front end A holds c1 on two channels, and c2 alone on the marker
    fx.attach("fe-a", "c1", x, &[Mode::Presence]).await;
    fx.attach("fe-a", "c1", y, &[Mode::Subscribe]).await;
    fx.enter("fe-a", "c1", x, "alice").await;
    fx.attach("fe-a", "c2", marker, &[]).await;
    if let Some(z) = &elsewhere {
        fx.attach("fe-a", "c1", z, &[]).await;
    }
    // c1 resumes on front end B, which stays alive
    fx.keep_alive("fe-b", LONG_TTL_MS).await;
    let m = fx.attach("fe-b", "c1", x, &[Mode::Presence]).await;
    assert_eq!(m, [1, 0, 0, 1, 1, 0, 0, 0, 1], "resume changes no count");
    // A dies: its lease runs out and c2 goes (with partitions, each
    // partition's copy of the lease runs out on its own)
    eventually(h.expiry_wait(), "fe-a to expire", || async {
        fx.keep_alive("fe-b", 0).await;
        let z_gone = match &elsewhere {
            Some(z) => fx.get(z).await[0] == 0,
            None => true,
        };
        (fx.get(marker).await[0] == 0 && z_gone).then_some(())
    })
    .await;
    // the whole of c1 in that partition moved to B and stays; in another
    // partition it went with A (waited for above)
    assert_eq!(fx.get(x).await, [1, 0, 0, 1, 1, 0, 0, 0, 1]);
    assert_eq!(fx.get(y).await, [1, 0, 1, 0, 0, 0, 0, 0, 0]);
    // and goes with B
    assert!(fx.close("fe-b").await);
    assert_eq!(fx.get(x).await, [0; 9]);
    assert_eq!(fx.get(y).await, [0; 9]);
}

async fn keep_alive_and_close_session(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    let r = fx.keep_alive("fe", 0).await;
    assert_eq!(r.status, pb::SessionStatus::Unknown as i32, "first keep-alive");
    assert_eq!(r.ttl_ms, h.ttl.as_millis() as u32);
    let r = fx.keep_alive("fe", 5_000).await;
    assert_eq!((r.status, r.ttl_ms), (pb::SessionStatus::Active as i32, 5_000));
    let r = fx.keep_alive("fe", 0).await;
    assert_eq!(
        (r.status, r.ttl_ms),
        (pb::SessionStatus::Active as i32, 5_000),
        "ttl sticks"
    );
    for bad in [1, 999, 600_001] {
        let e =
            fx.w.clone()
                .keep_alive(pb::KeepAliveRequest {
                    session_id: "fe".into(),
                    ttl_ms: bad,
                })
                .await;
        assert_invalid(e, "ttl_ms");
    }
    fx.attach("fe", "c1", "a", &[Mode::Presence]).await;
    fx.enter("fe", "c1", "a", "alice").await;
    fx.attach("fe", "c2", "b", &[]).await;
    fx.attach("other", "c3", "b", &[]).await;
    assert!(fx.close("fe").await);
    // removed before CloseSession returned
    assert_eq!(fx.get("a").await, [0; 9]);
    assert_eq!(fx.get("b").await, [1, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert!(!fx.close("fe").await, "closing twice");
    assert!(!fx.close("never-seen").await);
    // a write after closing opens a new lease
    fx.attach("fe", "c1", "a", &[]).await;
    assert_eq!(fx.keep_alive("fe", 0).await.status, pb::SessionStatus::Active as i32);
    // an expired session says so, and its state is gone
    eventually(h.expiry_wait(), "fe to expire", || async {
        (fx.get("a").await[0] == 0).then_some(())
    })
    .await;
    assert_eq!(fx.keep_alive("fe", 0).await.status, pb::SessionStatus::Unknown as i32);
}

/// A write or KeepAlive that opens a lease may give its epoch (so that
/// several stores can hold one lease under one epoch); a live lease keeps
/// its own, and closing it frees the session for a new given one.
async fn a_lease_opened_with_a_given_epoch_carries_it(h: Harness) {
    use occupancy::domain::{
        Applied, Batch, ChannelName, ConnectionId, KeepAliveOutcome, ModeSet, Operation, SessionId,
    };
    let store = h.store();
    let session = SessionId::parse("session", "fe").unwrap();
    let attach = Operation::Attach {
        connection: ConnectionId::parse("connection", "c1").unwrap(),
        channel: ChannelName::parse("channel", "room").unwrap(),
        modes: ModeSet::EMPTY,
    };
    let ops = [attach];
    let write = |open_epoch: u64| {
        let mut b = Batch::new(&ops, false);
        b.open_epoch = open_epoch;
        b
    };
    let (a, b, c) = (
        0x1234_5678_9abc_def1_u64,
        0xfedc_ba98_7654_3211_u64,
        0x0f0f_0f0f_0f0f_0f0f_u64,
    );
    let epoch = |applied: Applied| match applied {
        Applied::Done { epoch, .. } => epoch,
        other => panic!("the write applies: {other:?}"),
    };
    assert_eq!(
        epoch(store.write(&session, write(a)).await.unwrap()),
        a,
        "a write opens the lease with the given epoch"
    );
    assert_eq!(
        epoch(store.write(&session, write(b)).await.unwrap()),
        a,
        "a live lease keeps its epoch"
    );
    let alive = store.keep_alive_opening(&session, "", None, b).await.unwrap();
    assert!(
        matches!(alive, KeepAliveOutcome::Active { epoch, .. } if epoch == a),
        "{alive:?}"
    );
    assert_eq!(store.close_session(&session).await.unwrap(), Some(a));
    let opened = store.keep_alive_opening(&session, "", None, c).await.unwrap();
    assert!(
        matches!(opened, KeepAliveOutcome::Unknown { epoch, .. } if epoch == c),
        "{opened:?}"
    );
    // with none given, the store picks one (never 0)
    assert_eq!(store.close_session(&session).await.unwrap(), Some(c));
    let picked = epoch(store.write(&session, write(0)).await.unwrap());
    assert!(picked != 0 && picked != a && picked != c, "{picked}");
}
