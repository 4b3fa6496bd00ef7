//! Abuse: oversized requests and subscribe/cancel storms.

use std::time::{Duration, Instant};

use occupancy::proto::v1 as pb;
use pb::Mode;
use tonic::Code;

use crate::fixture::*;
use crate::support::sub::{req, subscribe};
use crate::support::{eventually, Harness};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16_mib_request_gets_a_clear_error_and_changes_nothing() {
    let h = Harness::redis(Duration::from_secs(60));
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    fx.attach("fe", "c0", "x", &[]).await;
    let big_channel = "y".repeat(1000);
    let ops: Vec<pb::Operation> = (0..16 * 1024)
        .map(|i| pb::Operation {
            op: Some(pb::operation::Op::Attach(pb::AttachOperation {
                connection_id: format!("c{i}"),
                channel: big_channel.clone(),
                modes: vec![],
            })),
        })
        .collect();
    let req = pb::ApplyRequest {
        session_id: "fe".into(),
        operations: ops,
        include_metrics: false,
        sequence: 0,
        session_epoch: 0,
    };
    assert!(prost::Message::encoded_len(&req) >= 16 * 1024 * 1000);
    let e = fx.w.clone().apply(req).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("message"), "{e:?}");
    // nothing changed, and the server still serves
    assert_eq!(fx.get(&big_channel).await, [0; 9]);
    assert_eq!(fx.get("x").await[0], 1);
    fx.attach("fe", "c1", "x", &[]).await;
    assert_eq!(fx.get("x").await[0], 2);
}

/// A request over the 4 MiB decoding limit but under the transport's
/// (a 6 MB Apply) used to answer OUT_OF_RANGE; the limit answers
/// RESOURCE_EXHAUSTED, naming it, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_6_mb_apply_answers_resource_exhausted_naming_the_limit() {
    let h = Harness::memory(Duration::from_secs(60));
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    let channel = "z".repeat(600);
    let ops: Vec<pb::Operation> = (0..10_000)
        .map(|i| pb::Operation {
            op: Some(pb::operation::Op::Attach(pb::AttachOperation {
                connection_id: format!("c{i}"),
                channel: channel.clone(),
                modes: vec![],
            })),
        })
        .collect();
    let req = pb::ApplyRequest {
        session_id: "fe".into(),
        operations: ops,
        ..Default::default()
    };
    let len = prost::Message::encoded_len(&req);
    assert!((6_000_000..8_000_000).contains(&len), "{len} bytes");
    let e = fx.w.clone().apply(req).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("4194304 bytes"), "names the limit: {e:?}");
    assert_eq!(fx.get(&channel).await, [0; 9]);
    // a request under the limit still goes through
    fx.attach("fe", "c1", "x", &[]).await;
    assert_eq!(fx.get("x").await[0], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_cancel_storms_leave_nothing_behind() {
    let h = Harness::memory(Duration::from_secs(60));
    let s = h.server().await;
    let fx = Fx::new(&s).await;
    fx.attach("fe", "c1", "x", &[Mode::Subscribe]).await;
    let started = Instant::now();
    let client = s.read().await;
    for i in 0..500 {
        let stream = client
            .clone()
            .subscribe_occupancy(req(&["x", "y"]))
            .await
            .unwrap()
            .into_inner();
        let mut sub = crate::support::sub::Sub::from_stream(stream);
        if i % 2 == 0 {
            // half of them read their snapshot first
            sub.next().await;
        }
        drop(sub);
        if i % 50 == 0 {
            fx.attach("fe", &format!("c{}", 2 + i / 50), "x", &[]).await;
        }
    }
    eventually(
        Duration::from_secs(10),
        "every cancelled subscription to unregister",
        || async { (s.hub.registrations() == 0).then_some(()) },
    )
    .await;
    assert_eq!(s.hub.pending(), 0);
    assert_eq!(fx.get("x").await[0], 11);
    // and a new subscriber works as before
    let mut sub = subscribe(&s, req(&["x"])).await.unwrap();
    assert_eq!(crate::support::sub::m(&sub.next().await)[0], 11);
    eprintln!("500 subscribe/cancel cycles in {:?}", started.elapsed());
}
