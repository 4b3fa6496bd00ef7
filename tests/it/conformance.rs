//! The store conformance suite: every case runs, through the gRPC API,
//! against the in-memory store and against a private Redis.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use occupancy::proto::v1 as pb;
use pb::Mode;
use tonic::Code;

use crate::fixture::*;
use crate::support::{eventually, Harness};

const ALL_MODES: [Mode; 6] = [
    Mode::Publish,
    Mode::Subscribe,
    Mode::Presence,
    Mode::PresenceSubscribe,
    Mode::ObjectPublish,
    Mode::ObjectSubscribe,
];

/// Lease of sessions in these tests (shorter than the service allows, so
/// expiry tests are quick).
const TTL: Duration = Duration::from_millis(600);
/// Lease for sessions that must outlive a test.
const LONG_TTL_MS: u32 = 60_000;

both_stores!(
    metrics_for_every_mode,
    writes_are_idempotent,
    reattach_replaces_modes,
    presence_clients_count_distinct_clients,
    members_are_told_apart_by_their_whole_id,
    a_small_write_after_large_ones_changes_only_its_own,
    enter_needs_presence_mode,
    apply_reports_each_operation,
    sequenced_batches_apply_once_and_in_order,
    concurrent_writes_each_get_their_own_answer,
    concurrent_writes_of_few_sessions_keep_their_owners,
    a_connection_holds_at_most_1000_channels,
    expiry_removes_everything_once_with_two_replicas,
    resume_moves_connection_to_new_session,
    keep_alive_and_close_session,
    list_walk_survives_churn,
    list_busiest_first,
    batch_get_keeps_request_order,
    bad_input_is_rejected_and_changes_nothing,
);

async fn metrics_for_every_mode(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    fx.keep_alive("fe", LONG_TTL_MS).await;
    // one channel per mode: connections 1 and exactly that mode's metric
    let slot = [1, 2, 3, 5, 6, 7];
    for (mode, slot) in ALL_MODES.iter().zip(slot) {
        let ch = format!("mode:{}", mode.as_str_name());
        let m = fx.attach("fe", "c1", &ch, &[*mode]).await;
        let mut want = [0u32; 9];
        want[0] = 1;
        want[slot] = 1;
        assert_eq!(m, want, "{mode:?}");
        assert_eq!(fx.get(&ch).await, want, "{mode:?} read back");
    }
    // no modes: counted in connections only
    assert_eq!(fx.attach("fe", "c2", "bare", &[]).await, [1, 0, 0, 0, 0, 0, 0, 0, 0]);
    // every mode, on two connections
    fx.attach("fe", "c3", "all", &ALL_MODES).await;
    let m = fx.attach("fe", "c4", "all", &ALL_MODES).await;
    assert_eq!(m, [2, 2, 2, 2, 0, 2, 2, 2, 0]);
    fx.enter("fe", "c3", "all", "alice").await;
    assert_eq!(fx.get("all").await, [2, 2, 2, 2, 1, 2, 2, 2, 1]);
    // a channel nobody attached to is inactive with zero metrics
    let d = fx.details("nobody").await;
    assert_eq!(d.channel_id, "nobody");
    assert!(!d.status.as_ref().unwrap().is_active);
    assert_eq!(fx.get("nobody").await, [0; 9]);
}

async fn writes_are_idempotent(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    fx.keep_alive("fe", LONG_TTL_MS).await;
    let m = [Mode::Publish, Mode::Presence];
    let once = fx.attach("fe", "c1", "ch", &m).await;
    assert_eq!(fx.attach("fe", "c1", "ch", &m).await, once);
    assert_eq!(once, [1, 1, 0, 1, 0, 0, 0, 0, 0]);
    let entered = fx.enter("fe", "c1", "ch", "alice").await;
    assert_eq!(fx.enter("fe", "c1", "ch", "alice").await, entered);
    assert_eq!(entered[4], 1);
    assert_eq!(fx.leave("fe", "c1", "ch", "alice").await[4], 0);
    assert_eq!(fx.leave("fe", "c1", "ch", "alice").await, once);
    // leaving or detaching what was never there is a success
    assert_eq!(fx.leave("fe", "ghost", "ch", "bob").await, once);
    assert_eq!(fx.detach("fe", "ghost", "ch").await, once);
    assert_eq!(fx.detach("fe", "c1", "elsewhere").await, [0; 9]);
    assert_eq!(fx.detach("fe", "c1", "ch").await, [0; 9]);
    assert_eq!(fx.detach("fe", "c1", "ch").await, [0; 9]);
    assert!(fx.list_all("", 100).await.is_empty());
}

async fn reattach_replaces_modes(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    fx.keep_alive("fe", LONG_TTL_MS).await;
    fx.attach("fe", "c1", "ch", &[Mode::Publish, Mode::Presence]).await;
    fx.attach("fe", "c2", "ch", &[Mode::Presence]).await;
    fx.enter("fe", "c1", "ch", "alice").await;
    fx.enter("fe", "c2", "ch", "bob").await;
    assert_eq!(fx.get("ch").await, [2, 1, 0, 2, 2, 0, 0, 0, 2]);
    // c1 now only subscribes: publisher and presence go, its member leaves
    let m = fx
        .attach("fe", "c1", "ch", &[Mode::Subscribe, Mode::ObjectSubscribe])
        .await;
    assert_eq!(m, [2, 0, 1, 1, 1, 0, 0, 1, 1]);
    // entering again needs presence back
    let e = fx.try_enter("fe", "c1", "ch", "alice").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    // upgrade keeps the connection count and adds the modes
    let m = fx.attach("fe", "c1", "ch", &ALL_MODES).await;
    assert_eq!(m, [2, 1, 1, 2, 1, 1, 1, 1, 1]);
    // a mode change that keeps presence keeps the members
    fx.enter("fe", "c1", "ch", "alice").await;
    let m = fx.attach("fe", "c1", "ch", &[Mode::Presence]).await;
    assert_eq!(m, [2, 0, 0, 2, 2, 0, 0, 0, 2]);
}

async fn presence_clients_count_distinct_clients(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    fx.keep_alive("fe", LONG_TTL_MS).await;
    for c in ["c1", "c2"] {
        fx.attach("fe", c, "room", &[Mode::Presence]).await;
    }
    // one user on two devices: two members, one client
    fx.enter("fe", "c1", "room", "alice").await;
    let m = fx.enter("fe", "c2", "room", "alice").await;
    assert_eq!((m[4], m[8]), (2, 1));
    let m = fx.enter("fe", "c2", "room", "bob").await;
    assert_eq!((m[4], m[8]), (3, 2));
    // detaching c1 removes its member; alice is still there through c2
    let m = fx.detach("fe", "c1", "room").await;
    assert_eq!((m[0], m[4], m[8]), (1, 2, 2));
    let m = fx.leave("fe", "c2", "room", "alice").await;
    assert_eq!((m[4], m[8]), (1, 1));
    // detach removes the last member too
    let m = fx.detach("fe", "c2", "room").await;
    assert_eq!(m, [0; 9]);
}

/// Member ids that start alike ("bo", "bob", "bobby") on one connection,
/// which is attached to a second channel whose members follow in the
/// connection's record: each enter and leave finds exactly its own member.
async fn members_are_told_apart_by_their_whole_id(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    fx.keep_alive("fe", LONG_TTL_MS).await;
    fx.attach("fe", "c1", "room", &[Mode::Presence]).await;
    fx.attach("fe", "c1", "room2", &[Mode::Presence]).await;
    fx.enter("fe", "c1", "room2", "zed").await;
    fx.enter("fe", "c1", "room2", "bob").await;
    for (id, members) in [("bobby", 1), ("bob", 2), ("b", 3), ("bob", 3), ("bo", 4), ("bobby", 4)] {
        let m = fx.enter("fe", "c1", "room", id).await;
        assert_eq!((m[4], m[8]), (members, members), "enter {id}");
    }
    // a member of the other channel is not one of this channel's
    let m = fx.leave("fe", "c1", "room", "zed").await;
    assert_eq!((m[4], m[8]), (4, 4), "leave zed");
    for (id, members) in [("bob", 3), ("bob", 3), ("bobby", 2), ("bobby", 2), ("b", 1), ("bo", 0)] {
        let m = fx.leave("fe", "c1", "room", id).await;
        assert_eq!((m[4], m[8]), (members, members), "leave {id}");
    }
    assert_eq!(fx.get("room").await, [1, 0, 0, 1, 0, 0, 0, 0, 0]);
    assert_eq!(fx.get("room2").await, [1, 0, 0, 1, 2, 0, 0, 0, 2]);
    // the record still holds room2's members: detaching removes them
    assert_eq!(fx.detach("fe", "c1", "room2").await, [0; 9]);
    let m = fx.enter("fe", "c1", "room", "bob").await;
    assert_eq!((m[4], m[8]), (1, 1));
}

/// Large writes followed by small ones: nothing of a larger earlier write
/// is written again, and nothing of it is left behind (a guard for the
/// Redis functions' per-call state: their argument lists must not carry
/// entries of an earlier call).
async fn a_small_write_after_large_ones_changes_only_its_own(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    fx.keep_alive("fe", LONG_TTL_MS).await;
    fx.keep_alive("fe2", LONG_TTL_MS).await;
    let chans: Vec<String> = (0..300).map(|i| format!("big-{i:03}")).collect();
    // 300 channels, each with a member; then all detached in one write
    let mut ops = Vec::new();
    for (i, ch) in chans.iter().enumerate() {
        let conn = format!("c{}", i % 50);
        ops.push(attach_op(&conn, ch, &[Mode::Presence]));
        ops.push(enter_op(&conn, ch, "alice"));
    }
    fx.apply("fe", ops).await;
    assert_eq!(fx.list_all("big-", 1000).await.len(), 300);
    let ops = chans
        .iter()
        .enumerate()
        .map(|(i, ch)| detach_op(&format!("c{}", i % 50), ch))
        .collect();
    fx.apply("fe", ops).await;
    // small writes of another session, then of the first
    assert_eq!(
        fx.attach("fe2", "d1", "small", &[Mode::Subscribe]).await,
        [1, 0, 1, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(fx.attach("fe", "c1", "small", &[]).await, [2, 0, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(fx.list_all("", 1000).await, ["small"]);
    for ch in [&chans[0], &chans[150], &chans[299]] {
        assert_eq!(fx.get(ch).await, [0; 9], "{ch}");
    }
    // closing the first session removes exactly its one attachment left
    assert!(fx.close("fe").await);
    assert_eq!(fx.get("small").await, [1, 0, 1, 0, 0, 0, 0, 0, 0]);
}

async fn enter_needs_presence_mode(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    fx.keep_alive("fe", LONG_TTL_MS).await;
    let e = fx.try_enter("fe", "c1", "ch", "alice").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "not attached");
    fx.attach("fe", "c1", "ch", &[Mode::Subscribe, Mode::PresenceSubscribe])
        .await;
    let e = fx.try_enter("fe", "c1", "ch", "alice").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "no presence mode");
    fx.attach("fe", "c1", "other", &[Mode::Presence]).await;
    let e = fx.try_enter("fe", "c1", "ch", "alice").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "presence on another channel only");
    assert_eq!(fx.get("ch").await, [1, 0, 1, 0, 0, 1, 0, 0, 0]);
}

async fn apply_reports_each_operation(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    fx.keep_alive("fe", LONG_TTL_MS).await;
    let ops = vec![
        attach_op("c1", "x", &[Mode::Presence, Mode::Publish]),
        enter_op("c1", "x", "alice"),
        enter_op("c2", "x", "bob"),
        attach_op("c2", "x", &[Mode::Subscribe]),
        leave_op("c1", "x", "alice"),
        detach_op("c1", "x"),
        attach_op("c3", "y", &[]),
    ];
    let r = fx.try_apply("fe", ops, true).await.expect("apply");
    let statuses: Vec<i32> = r.iter().map(|r| r.status).collect();
    let ok = pb::OperationStatus::Ok as i32;
    let fp = pb::OperationStatus::FailedPrecondition as i32;
    assert_eq!(statuses, [ok, ok, fp, ok, ok, ok, ok]);
    assert!(r[2].message.contains("MODE_PRESENCE"));
    let m: Vec<[u32; 9]> = r.iter().map(|r| arr(r.metrics.as_ref().expect("metrics"))).collect();
    assert_eq!(m[0], [1, 1, 0, 1, 0, 0, 0, 0, 0]);
    assert_eq!(m[1], [1, 1, 0, 1, 1, 0, 0, 0, 1]);
    assert_eq!(m[2], m[1]);
    assert_eq!(m[3], [2, 1, 1, 1, 1, 0, 0, 0, 1]);
    assert_eq!(m[4], [2, 1, 1, 1, 0, 0, 0, 0, 0]);
    assert_eq!(m[5], [1, 0, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(m[6], [1, 0, 0, 0, 0, 0, 0, 0, 0]);
    // without include_metrics, none are returned
    let r = fx
        .try_apply("fe", vec![attach_op("c4", "y", &[])], false)
        .await
        .unwrap();
    assert!(r[0].metrics.is_none());
    assert_eq!(fx.get("y").await[0], 2);
}

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
    eventually(Duration::from_secs(10), "short sessions to expire", || async {
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

async fn resume_moves_connection_to_new_session(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    // front end A holds c1 on two channels, and c2 alone on "marker"
    fx.attach("fe-a", "c1", "x", &[Mode::Presence]).await;
    fx.attach("fe-a", "c1", "y", &[Mode::Subscribe]).await;
    fx.enter("fe-a", "c1", "x", "alice").await;
    fx.attach("fe-a", "c2", "marker", &[]).await;
    // c1 resumes on front end B, which stays alive
    fx.keep_alive("fe-b", LONG_TTL_MS).await;
    let m = fx.attach("fe-b", "c1", "x", &[Mode::Presence]).await;
    assert_eq!(m, [1, 0, 0, 1, 1, 0, 0, 0, 1], "resume changes no count");
    // A dies: its lease runs out and c2 goes
    eventually(Duration::from_secs(10), "fe-a to expire", || async {
        fx.keep_alive("fe-b", 0).await;
        (fx.get("marker").await[0] == 0).then_some(())
    })
    .await;
    // the whole of c1 moved to B and stays
    assert_eq!(fx.get("x").await, [1, 0, 0, 1, 1, 0, 0, 0, 1]);
    assert_eq!(fx.get("y").await, [1, 0, 1, 0, 0, 0, 0, 0, 0]);
    // and goes with B
    assert!(fx.close("fe-b").await);
    assert_eq!(fx.get("x").await, [0; 9]);
    assert_eq!(fx.get("y").await, [0; 9]);
}

async fn keep_alive_and_close_session(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    let r = fx.keep_alive("fe", 0).await;
    assert_eq!(r.status, pb::SessionStatus::Unknown as i32, "first keep-alive");
    assert_eq!(r.ttl_ms, TTL.as_millis() as u32);
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
    eventually(Duration::from_secs(10), "fe to expire", || async {
        (fx.get("a").await[0] == 0).then_some(())
    })
    .await;
    assert_eq!(fx.keep_alive("fe", 0).await.status, pb::SessionStatus::Unknown as i32);
}

async fn list_walk_survives_churn(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    fx.keep_alive("fe", LONG_TTL_MS).await;
    let name = |i: usize| format!("p:{i:05}");
    // 2,500 channels under the prefix and some outside it, on both sides
    let mut ops = Vec::new();
    for i in 0..2_500 {
        ops.push(attach_op(&format!("c{i}"), &name(i), &[Mode::Subscribe]));
    }
    for other in ["o:1", "p", "p;", "q:1", "a"] {
        ops.push(attach_op("outsider", other, &[]));
    }
    for chunk in ops.chunks(1_000) {
        fx.apply("fe", chunk.to_vec()).await;
    }
    // walk with churn between pages: every third channel may go, new ones come
    let churn: HashSet<usize> = (0..2_500).filter(|i| i % 3 == 0).collect();
    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    let mut removed = 0;
    loop {
        pages += 1;
        assert!(pages < 1_000, "walk did not end");
        let page = fx
            .list(pb::ListChannelsRequest {
                prefix: "p:".into(),
                limit: 50,
                cursor: cursor.clone(),
                by: if pages % 2 == 0 {
                    pb::ListBy::Id
                } else {
                    pb::ListBy::Value
                } as i32,
                order: pb::ListOrder::Name as i32,
            })
            .await
            .expect("list page");
        if !page.next_cursor.is_empty() {
            assert!(!page.channels.is_empty(), "an empty page while more follow");
        }
        for c in &page.channels {
            assert!(c.channel_id.starts_with("p:"), "{} outside the prefix", c.channel_id);
            if pages % 2 == 0 {
                assert!(c.status.is_none(), "LIST_BY_ID carries no status");
            } else {
                let st = c.status.as_ref().expect("LIST_BY_VALUE carries status");
                assert!(st.is_active);
                assert!(st.occupancy.as_ref().unwrap().metrics.as_ref().unwrap().connections >= 1);
            }
            seen.push(c.channel_id.clone());
        }
        // between pages: remove 20 churn channels anywhere, add 5 new ones
        let mut ops = Vec::new();
        for i in churn.iter().copied().skip(removed).take(20) {
            ops.push(detach_op(&format!("c{i}"), &name(i)));
        }
        removed += 20;
        for k in 0..5 {
            ops.push(attach_op(
                &format!("new{pages}-{k}"),
                &format!("p:new-{pages}-{k}"),
                &[],
            ));
        }
        fx.apply("fe", ops).await;
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a channel was listed twice");
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, seen, "pages are in byte order");
    for i in (0..2_500).filter(|i| !churn.contains(i)) {
        assert!(
            unique.contains(&name(i)),
            "{} was active throughout but not seen",
            name(i)
        );
    }
    assert!(pages > 40, "the walk took {pages} pages");
    // limits and cursors are checked
    let bad = fx
        .list(pb::ListChannelsRequest {
            limit: 1_001,
            ..Default::default()
        })
        .await;
    assert_invalid(bad, "limit");
    let full = fx
        .list(pb::ListChannelsRequest {
            limit: 1_000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(full.channels.len(), 1_000);
    let default = fx.list(pb::ListChannelsRequest::default()).await.unwrap();
    assert_eq!(default.channels.len(), 100, "default limit");
    assert_eq!(default.channels[0].channel_id, "a");
}

async fn list_busiest_first(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    fx.keep_alive("fe", LONG_TTL_MS).await;
    // channel i has (i % 7) + 1 connections
    let mut ops = Vec::new();
    let mut want: Vec<(u32, String)> = Vec::new();
    for i in 0..60 {
        let ch = format!("room-{i:02}");
        let n = (i % 7) + 1;
        for c in 0..n {
            ops.push(attach_op(&format!("c{c}"), &ch, &[]));
        }
        want.push((n, ch));
    }
    fx.apply("fe", ops).await;
    want.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let req = |cursor: String| pb::ListChannelsRequest {
        limit: 25,
        cursor,
        order: pb::ListOrder::ConnectionsDesc as i32,
        ..Default::default()
    };
    let mut got = Vec::new();
    let mut cursor = String::new();
    for _ in 0..10 {
        let page = fx.list(req(cursor.clone())).await.unwrap();
        for c in page.channels {
            let n = c.status.unwrap().occupancy.unwrap().metrics.unwrap().connections;
            got.push((n, c.channel_id));
        }
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(got, want, "busiest first, ties by name, across pages");
    // a name-order cursor is refused for a busiest-first walk
    let first = fx
        .list(pb::ListChannelsRequest {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_invalid(fx.list(req(first.next_cursor)).await, "cursor");
    // with a prefix
    let page = fx
        .list(pb::ListChannelsRequest {
            prefix: "room-1".into(),
            limit: 3,
            order: pb::ListOrder::ConnectionsDesc as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let names: Vec<_> = page.channels.iter().map(|c| c.channel_id.as_str()).collect();
    // room-13 has 7; room-12 and room-19 have 6, ties by name
    assert_eq!(names, ["room-13", "room-12", "room-19"]);
}

async fn batch_get_keeps_request_order(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    fx.attach("fe", "c1", "a", &[Mode::Publish]).await;
    fx.attach("fe", "c1", "b", &[Mode::Subscribe]).await;
    fx.attach("fe", "c2", "b", &[Mode::Subscribe]).await;
    let r =
        fx.r.clone()
            .batch_get_occupancy(pb::BatchGetOccupancyRequest {
                channels: vec!["b".into(), "none".into(), "a".into(), "b".into()],
            })
            .await
            .unwrap()
            .into_inner();
    let got: Vec<(String, bool, u32)> = r
        .channels
        .into_iter()
        .map(|c| {
            let st = c.status.unwrap();
            (
                c.channel_id,
                st.is_active,
                st.occupancy.unwrap().metrics.unwrap().connections,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("b".to_string(), true, 2),
            ("none".to_string(), false, 0),
            ("a".to_string(), true, 1),
            ("b".to_string(), true, 2)
        ]
    );
    let many: Vec<String> = (0..1_000).map(|i| format!("ch{i}")).collect();
    let r =
        fx.r.clone()
            .batch_get_occupancy(pb::BatchGetOccupancyRequest { channels: many.clone() })
            .await
            .unwrap();
    let names: Vec<String> = r.into_inner().channels.into_iter().map(|c| c.channel_id).collect();
    assert_eq!(names, many);
    let mut too_many = many;
    too_many.push("one more".into());
    let r =
        fx.r.clone()
            .batch_get_occupancy(pb::BatchGetOccupancyRequest { channels: too_many })
            .await;
    assert_invalid(r, "channels");
    let r =
        fx.r.clone()
            .batch_get_occupancy(pb::BatchGetOccupancyRequest { channels: vec![] })
            .await;
    assert_invalid(r, "channels");
    let r =
        fx.r.clone()
            .batch_get_occupancy(pb::BatchGetOccupancyRequest {
                channels: vec!["ok".into(), "".into()],
            })
            .await;
    assert_invalid(r, "channels[1]");
}

async fn bad_input_is_rejected_and_changes_nothing(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    fx.keep_alive("fe", LONG_TTL_MS).await;
    fx.attach("fe", "c0", "base", &[Mode::Presence]).await;
    let before = fx.get("base").await;
    let long_channel = "x".repeat(1_025);
    let long_id = "i".repeat(257);
    let attach = |session: &str, conn: &str, channel: &str, modes: Vec<i32>| pb::AttachRequest {
        session_id: session.into(),
        connection_id: conn.into(),
        channel: channel.into(),
        modes,
    };
    let w = fx.w.clone();
    let cases: Vec<(pb::AttachRequest, &str)> = vec![
        (attach("fe", "c1", "", vec![]), "channel"),
        (attach("fe", "c1", &long_channel, vec![]), "channel"),
        (attach("fe", "c1", "bad\nname", vec![]), "channel"),
        (attach("fe", "c1", "bad\u{7}", vec![]), "channel"),
        (attach("fe", "c1", "[meta]occupancy", vec![]), "channel"),
        (attach("", "c1", "base", vec![]), "session_id"),
        (attach(&long_id, "c1", "base", vec![]), "session_id"),
        (attach("fe", "", "base", vec![]), "connection_id"),
        (attach("fe", &long_id, "base", vec![]), "connection_id"),
        (attach("fe", "c\u{0}1", "base", vec![]), "connection_id"),
        (attach("fe", "c1", "base", vec![99]), "modes[0]"),
        (attach("fe", "c1", "base", vec![1, 0]), "modes[1]"),
        (attach("fe", "c1", "base", vec![-1]), "modes[0]"),
    ];
    for (req, field) in cases {
        assert_invalid(w.clone().attach(req).await, field);
    }
    let r = w
        .clone()
        .enter_presence(pb::EnterPresenceRequest {
            session_id: "fe".into(),
            connection_id: "c0".into(),
            channel: "base".into(),
            client_id: "\u{1b}[31m".into(),
        })
        .await;
    assert_invalid(r, "client_id");
    let r = w
        .clone()
        .leave_presence(pb::LeavePresenceRequest {
            session_id: "fe".into(),
            connection_id: "c0".into(),
            channel: "base".into(),
            client_id: String::new(),
        })
        .await;
    assert_invalid(r, "client_id");
    // batches: empty, too large, one bad operation among good ones, unset op
    assert_invalid(fx.try_apply("fe", vec![], false).await, "operations");
    let huge = vec![attach_op("c1", "base", &[]); 10_001];
    assert_invalid(fx.try_apply("fe", huge, false).await, "operations");
    let mixed = vec![
        attach_op("c1", "base", &[Mode::Presence]),
        enter_op("c1", "base", "alice"),
        attach_op("c2", "", &[]),
    ];
    assert_invalid(fx.try_apply("fe", mixed, false).await, "operations[2].attach.channel");
    let r = w
        .clone()
        .apply(pb::ApplyRequest {
            session_id: "fe".into(),
            operations: vec![pb::Operation { op: None }],
            include_metrics: false,
            sequence: 0,
            session_epoch: 0,
        })
        .await;
    assert_invalid(r, "operations[0].op");
    // reads
    let r =
        fx.r.clone()
            .get_occupancy(pb::GetOccupancyRequest { channel: "".into() })
            .await;
    assert_invalid(r, "channel");
    for (req, field) in [
        (
            pb::ListChannelsRequest {
                cursor: "not a cursor!".into(),
                ..Default::default()
            },
            "cursor",
        ),
        (
            pb::ListChannelsRequest {
                cursor: "AAAA".into(),
                ..Default::default()
            },
            "cursor",
        ),
        (
            pb::ListChannelsRequest {
                order: 42,
                ..Default::default()
            },
            "order",
        ),
        (
            pb::ListChannelsRequest {
                by: 42,
                ..Default::default()
            },
            "by",
        ),
        (
            pb::ListChannelsRequest {
                prefix: "a\u{0}".into(),
                ..Default::default()
            },
            "prefix",
        ),
    ] {
        assert_invalid(fx.list(req).await, field);
    }
    // nothing changed
    assert_eq!(fx.get("base").await, before);
    assert_eq!(fx.list_all("", 100).await, ["base"]);
    // odd but valid Unicode is served as is
    let odd = "ch\u{200b}\u{202e}é😀\u{fffd}";
    fx.attach("fe", "conn\u{feff}", odd, &[Mode::Presence]).await;
    fx.enter("fe", "conn\u{feff}", odd, "用户").await;
    assert_eq!(fx.get(odd).await, [1, 0, 0, 1, 1, 0, 0, 0, 1]);
    assert_eq!(fx.list_all("ch\u{200b}", 10).await, [odd]);
}

async fn sequenced_batches_apply_once_and_in_order(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    let send = |seq: u64, ops: Vec<pb::operation::Op>| {
        let mut w = fx.w.clone();
        async move {
            w.apply(pb::ApplyRequest {
                session_id: "fe".into(),
                operations: ops.into_iter().map(|op| pb::Operation { op: Some(op) }).collect(),
                include_metrics: false,
                sequence: seq,
                session_epoch: 0,
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    let enter = vec![attach_op("c1", "x", &[Mode::Presence]), enter_op("c1", "x", "alice")];
    let r = send(10, enter.clone()).await;
    assert!(!r.already_applied);
    assert_eq!(r.results.len(), 2);
    let r = send(11, vec![leave_op("c1", "x", "alice")]).await;
    assert!(!r.already_applied);
    assert_eq!(fx.get("x").await[4], 0);
    // the first batch again (a retry), and an older one arriving late:
    // neither applies, so alice does not come back
    let r = send(10, enter.clone()).await;
    assert!(r.already_applied && r.results.is_empty());
    let r = send(9, enter.clone()).await;
    assert!(r.already_applied);
    assert_eq!(fx.get("x").await, [1, 0, 0, 1, 0, 0, 0, 0, 0]);
    // a newer one applies; sequence 0 always applies
    assert!(!send(12, vec![attach_op("c2", "x", &[])]).await.already_applied);
    assert!(!send(0, vec![attach_op("c3", "x", &[])]).await.already_applied);
    assert_eq!(fx.get("x").await[0], 3);
    // sequences are per session
    let mut w = fx.w.clone();
    let r = w
        .apply(pb::ApplyRequest {
            session_id: "other".into(),
            operations: vec![pb::Operation {
                op: Some(attach_op("c4", "x", &[])),
            }],
            include_metrics: false,
            sequence: 1,
            session_epoch: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.already_applied);
    assert_eq!(fx.get("x").await[0], 4);
}

/// A burst of writes from a few sessions, interleaved (the Redis store
/// applies one call's writes session by session): every write applies,
/// each connection ends up owned by the session that wrote it, and closing
/// a session removes exactly its connections.
async fn concurrent_writes_of_few_sessions_keep_their_owners(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    const SESSIONS: [&str; 3] = ["fa", "fb", "fc"];
    for fe in SESSIONS {
        fx.keep_alive(fe, LONG_TTL_MS).await;
    }
    let mut calls = Vec::new();
    for k in 0..60usize {
        let session = SESSIONS[k % 3];
        let conn = format!("{session}-c{k}");
        let ops = [
            attach_op(&conn, "few", &[Mode::Subscribe]),
            attach_op(&conn, &format!("few-{session}"), &[Mode::Presence]),
            enter_op(&conn, &format!("few-{session}"), &format!("u{k}")),
        ];
        let mut w = fx.w.clone();
        calls.push(tokio::spawn(async move {
            w.apply(pb::ApplyRequest {
                session_id: session.into(),
                operations: ops.into_iter().map(|op| pb::Operation { op: Some(op) }).collect(),
                include_metrics: false,
                sequence: 0,
                session_epoch: 0,
            })
            .await
            .unwrap()
            .into_inner()
        }));
    }
    for c in calls {
        let r = tokio::time::timeout(Duration::from_secs(20), c).await.unwrap().unwrap();
        let status: Vec<i32> = r.results.iter().map(|x| x.status).collect();
        assert_eq!(status, [pb::OperationStatus::Ok as i32; 3]);
    }
    assert_eq!(fx.get("few").await[0], 60);
    for fe in SESSIONS {
        let m = fx.get(&format!("few-{fe}")).await;
        assert_eq!((m[0], m[4]), (20, 20), "{fe}: {m:?}");
    }
    // closing a session removes its 20 connections and nothing else
    assert!(fx.close("fb").await);
    assert_eq!(fx.get("few").await[0], 40);
    assert_eq!(fx.get("few-fb").await, [0; 9]);
    assert_eq!(fx.get("few-fa").await[0], 20);
    assert!(fx.close("fa").await);
    assert_eq!(fx.get("few").await[0], 20);
    assert_eq!(fx.get("few-fc").await[4], 20);
}

async fn a_connection_holds_at_most_1000_channels(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    fx.keep_alive("fe", LONG_TTL_MS).await;
    let ops: Vec<_> = (0..1_001)
        .map(|i| attach_op("busy", &format!("c{i:04}"), &[]))
        .collect();
    let r = fx.apply("fe", ops).await;
    assert!(r[..1_000].iter().all(|r| r.status == pb::OperationStatus::Ok as i32));
    assert_eq!(r[1_000].status, pb::OperationStatus::ResourceExhausted as i32);
    assert_eq!(fx.get("c1000").await, [0; 9]);
    // re-attaching one it holds is fine; a new one is refused on its own too
    fx.attach("fe", "busy", "c0000", &[Mode::Publish]).await;
    let e =
        fx.w.clone()
            .attach(pb::AttachRequest {
                session_id: "fe".into(),
                connection_id: "busy".into(),
                channel: "c1000".into(),
                modes: vec![],
            })
            .await
            .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    // after a detach there is room again
    fx.detach("fe", "busy", "c0001").await;
    assert_eq!(fx.attach("fe", "busy", "c1000", &[]).await[0], 1);
    // closing removes all 1,000 at once
    assert!(fx.close("fe").await);
    assert!(fx.list_all("", 1_000).await.is_empty());
}

/// Many writes at once (which the Redis store sends as one script call):
/// each write gets its own statuses and metrics, a stale sequenced write
/// among them changes nothing, and the counts add up.
async fn concurrent_writes_each_get_their_own_answer(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    let apply = |session: String, seq: u64, ops: Vec<pb::operation::Op>| {
        let mut w = fx.w.clone();
        async move {
            w.apply(pb::ApplyRequest {
                session_id: session,
                operations: ops.into_iter().map(|op| pb::Operation { op: Some(op) }).collect(),
                include_metrics: true,
                sequence: seq,
                session_epoch: 0,
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    let first = apply("seq".into(), 5, vec![attach_op("s1", "g", &[Mode::Presence])]).await;
    assert!(!first.already_applied);
    let mut calls = Vec::new();
    for k in 0..60u32 {
        let ops = vec![
            attach_op(&format!("c{k}"), "g", &[Mode::Presence, Mode::Subscribe]),
            enter_op(&format!("c{k}"), "g", &format!("u{}", k % 3)),
            // not attached here: this operation's own status
            enter_op(&format!("c{k}"), &format!("other-{k}"), "u"),
        ];
        calls.push(tokio::spawn(apply(format!("s{k}"), 0, ops)));
        if k == 30 {
            // a stale write of session "seq" in the middle of the burst
            calls.push(tokio::spawn(apply(
                "seq".into(),
                4,
                vec![attach_op("s2", "g", &[Mode::Presence])],
            )));
        }
    }
    let mut stale = 0;
    for c in calls {
        let r = tokio::time::timeout(Duration::from_secs(20), c).await.unwrap().unwrap();
        if r.already_applied {
            stale += 1;
            assert!(r.results.is_empty());
            continue;
        }
        assert_eq!(r.results.len(), 3);
        let status: Vec<i32> = r.results.iter().map(|x| x.status).collect();
        assert_eq!(
            status,
            [
                pb::OperationStatus::Ok as i32,
                pb::OperationStatus::Ok as i32,
                pb::OperationStatus::FailedPrecondition as i32
            ]
        );
        // each write's metrics are those after its own operation
        let m = arr(r.results[1].metrics.as_ref().unwrap());
        assert!(m[0] >= 2 && m[4] >= 1, "{m:?}");
        assert_eq!(arr(r.results[2].metrics.as_ref().unwrap()), [0; 9]);
    }
    assert_eq!(stale, 1, "exactly the stale write answers already_applied");
    let g = fx.get("g").await;
    // 60 connections plus s1 (s2 was never attached); 60 members of 3 clients
    assert_eq!(g[0], 61);
    assert_eq!(g[4], 60);
    assert_eq!(g[8], 3);
}
