//! Apply batches: per-operation results, large writes followed by small
//! ones, sequences, concurrent writes and the per-connection channel limit.

use std::time::Duration;

use occupancy::proto::v1 as pb;
use pb::Mode;
use tonic::Code;

use super::{LONG_TTL_MS, TTL};
use crate::fixture::*;
use crate::support::Harness;

all_stores!(
    a_small_write_after_large_ones_changes_only_its_own,
    apply_reports_each_operation,
    sequenced_batches_apply_once_and_in_order,
    concurrent_writes_each_get_their_own_answer,
    concurrent_writes_of_few_sessions_keep_their_owners,
    a_connection_holds_at_most_1000_channels,
);

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

async fn sequenced_batches_apply_once_and_in_order(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    let send = |seq: u64, ops: Vec<pb::operation::Op>| {
        let fx = fx.clone();
        async move {
            fx.send(pb::ApplyRequest {
                sequence: seq,
                ..batch("fe", ops)
            })
            .await
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
    let r = fx
        .send(pb::ApplyRequest {
            sequence: 1,
            ..batch("other", vec![attach_op("c4", "x", &[])])
        })
        .await;
    assert!(!r.already_applied);
    assert_eq!(fx.get("x").await[0], 4);
}

/// Many writes at once (which the Redis store sends as one script call):
/// each write gets its own statuses and metrics, a stale sequenced write
/// among them changes nothing, and the counts add up.
async fn concurrent_writes_each_get_their_own_answer(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    let apply = |session: String, seq: u64, ops: Vec<pb::operation::Op>| {
        let fx = fx.clone();
        async move {
            fx.send(pb::ApplyRequest {
                include_metrics: true,
                sequence: seq,
                ..batch(&session, ops)
            })
            .await
        }
    };
    // "seq" must outlive the burst: a lapsed lease would forget its sequence
    fx.keep_alive("seq", LONG_TTL_MS).await;
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
        let ops = vec![
            attach_op(&conn, "few", &[Mode::Subscribe]),
            attach_op(&conn, &format!("few-{session}"), &[Mode::Presence]),
            enter_op(&conn, &format!("few-{session}"), &format!("u{k}")),
        ];
        let fx = fx.clone();
        calls.push(tokio::spawn(async move { fx.send(batch(session, ops)).await }));
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

/// The limit counts a connection's attachments in each partition (see
/// `store::partitioned`): the channels here share one, so the limit is the
/// one a single store applies, and with partitions a channel of another
/// partition does not count.
async fn a_connection_holds_at_most_1000_channels(h: Harness) {
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    let (names, elsewhere) = h.names_in_one_partition("c", 1_001);
    fx.keep_alive("fe", LONG_TTL_MS).await;
    let ops: Vec<_> = names.iter().map(|name| attach_op("busy", name, &[])).collect();
    let r = fx.apply("fe", ops).await;
    assert!(r[..1_000].iter().all(|r| r.status == pb::OperationStatus::Ok as i32));
    assert_eq!(r[1_000].status, pb::OperationStatus::ResourceExhausted as i32);
    assert_eq!(fx.get(&names[1_000]).await, [0; 9]);
    // re-attaching one it holds is fine; a new one is refused on its own too
    fx.attach("fe", "busy", &names[0], &[Mode::Publish]).await;
    let e =
        fx.w.clone()
            .attach(pb::AttachRequest {
                session_id: "fe".into(),
                connection_id: "busy".into(),
                channel: names[1_000].clone(),
                modes: vec![],
            })
            .await
            .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    if let Some(other) = &elsewhere {
        assert_eq!(
            fx.attach("fe", "busy", other, &[]).await[0],
            1,
            "another partition counts its own"
        );
    }
    // after a detach there is room again
    fx.detach("fe", "busy", &names[1]).await;
    assert_eq!(fx.attach("fe", "busy", &names[1_000], &[]).await[0], 1);
    // closing removes all of them at once
    assert!(fx.close("fe").await);
    assert!(fx.list_all("", 1_000).await.is_empty());
}
