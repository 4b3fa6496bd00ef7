//! Metrics per mode, idempotent writes, mode changes and presence
//! members, through single writes.

use occupancy::proto::v1 as pb;
use pb::Mode;
use tonic::Code;

use super::{LONG_TTL_MS, TTL};
use crate::fixture::*;
use crate::support::Harness;

all_stores!(
    metrics_for_every_mode,
    writes_are_idempotent,
    reattach_replaces_modes,
    presence_clients_count_distinct_clients,
    members_are_told_apart_by_their_whole_id,
    enter_needs_presence_mode,
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
