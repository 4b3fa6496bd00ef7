//! Sessions belong to the key that opened them, through gRPC and through
//! the Rust client's session helper.

use std::time::Duration;

use occupancy::proto::v1 as pb;
use pb::Mode;
use tonic::Code;

use super::{attach, close, detach_batch, enter, everything, fe_holds_alice, keep_alive, sync, TTL};
use crate::fixture::*;
use crate::support::auth::{key_file_text, server, with, KeyFile, ADMIN, DASH, FE, FE2};
use crate::support::Harness;

both_stores!(sessions_belong_to_the_key_that_opened_them);

/// A session belongs to the key that opened it: another key cannot keep
/// it alive, close, sync or write it, nor take over its connections, on
/// any of three replicas; the owner can, from any replica.
async fn sessions_belong_to_the_key_that_opened_them(h: Harness) {
    let keys = KeyFile::new(&key_file_text(""));
    let (a, b, c) = (
        server(&h, &keys).await,
        server(&h, &keys).await,
        server(&h, &keys).await,
    );
    let mut admin = with(&a, ADMIN).await;
    fe_holds_alice(&a).await;
    let before = everything(&mut admin).await;
    let other_session = |conn: &str| pb::AttachRequest {
        session_id: "fe2-1".into(),
        ..attach(conn, "rooms:2")
    };
    for replica in [&b, &c] {
        let mut fe2 = with(replica, FE2).await;
        let takeover = vec![
            attach_op("c-7", "rooms:2", &[Mode::Subscribe]),
            attach_op("c-1", "rooms:2", &[Mode::Subscribe]),
        ];
        let denied: Vec<(&str, Result<(), tonic::Status>)> = vec![
            ("keep alive", fe2.w.keep_alive(keep_alive("fe-1")).await.map(drop)),
            ("close", fe2.w.close_session(close("fe-1")).await.map(drop)),
            ("sync", fe2.w.sync_session(sync("fe-1")).await.map(drop)),
            ("attach into", fe2.w.attach(attach("c-9", "rooms:1")).await.map(drop)),
            ("apply into", fe2.w.apply(detach_batch("fe-1")).await.map(drop)),
            (
                "take over by attach",
                fe2.w.attach(other_session("c-1")).await.map(drop),
            ),
            (
                "take over by enter",
                fe2.w.enter_presence(enter("fe2-1", "mallory")).await.map(drop),
            ),
            (
                "take over in a batch",
                fe2.w.apply(batch("fe2-1", takeover)).await.map(drop),
            ),
        ];
        for (what, r) in denied {
            let e = r.expect_err(what);
            assert_eq!(e.code(), Code::PermissionDenied, "{what}: {e:?}");
            assert!(e.message().contains("fe2"), "{what}: {e:?}");
            assert_eq!(everything(&mut admin).await, before, "{what} changed the store");
        }
    }
    // the owner, from another replica: keeps it alive, and resumes its
    // connection in another session of its own
    let mut fe_c = with(&c, FE).await;
    let ka = fe_c.w.keep_alive(keep_alive("fe-1")).await.unwrap().into_inner();
    assert_eq!(ka.status, pb::SessionStatus::Active as i32);
    fe_c.w
        .attach(pb::AttachRequest {
            session_id: "fe-1b".into(),
            ..attach("c-1", "rooms:1")
        })
        .await
        .unwrap();
    // fe's old session now holds nothing of c-1: closing it leaves rooms:1
    fe_c.w.close_session(close("fe-1")).await.unwrap();
    let now_state = everything(&mut admin).await;
    assert_eq!(now_state.len(), 1, "{now_state:?}");
    assert_eq!(now_state[0].1[0], 1, "c-1 still attached through fe-1b");
}

/// The Rust client sends its key with every call: the Session helper
/// works with a front end's key, a dashboard's key reads, and a client
/// without a credential is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_and_its_session_helper_use_a_key() {
    let h = Harness::memory(TTL);
    let keys = KeyFile::new(&key_file_text(""));
    let s = server(&h, &keys).await;
    let fe = occupancy_client::Client::builder()
        .endpoint(s.url())
        .api_key(FE)
        .connect()
        .unwrap();
    let session = fe.session("fe-rust", Duration::from_secs(5)).await.unwrap();
    session.attach("c-1", "rooms:1", &[occupancy_client::proto::Mode::Subscribe]);
    session.flush().await.unwrap();
    assert!(
        !session.keep_alive().await.unwrap(),
        "the session was known: no re-sync"
    );
    let dash = occupancy_client::Client::builder()
        .endpoint(s.url())
        .api_key(DASH)
        .connect()
        .unwrap();
    assert_eq!(dash.room("rooms:1").occupancy().get().await.unwrap().connections, 1);
    // the session belongs to fe: dash's own writes to it are refused
    let mut other = with(&s, FE2).await;
    let e = other
        .w
        .keep_alive(pb::KeepAliveRequest {
            session_id: "fe-rust".into(),
            ttl_ms: 5_000,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let anon = occupancy_client::Client::builder().endpoint(s.url()).connect().unwrap();
    let e = anon.room("rooms:1").occupancy().get().await.unwrap_err();
    assert_eq!(e.code(), Some(Code::Unauthenticated), "{e:?}");
    session.close().await.unwrap();
    assert_eq!(dash.room("rooms:1").occupancy().get().await.unwrap().connections, 0);
}
