//! Reads: ListChannels walks under churn and busiest first, and
//! BatchGetOccupancy order and limits.

use std::collections::{BTreeSet, HashSet};

use occupancy::proto::v1 as pb;
use pb::Mode;

use super::{LONG_TTL_MS, TTL};
use crate::fixture::*;
use crate::support::Harness;

all_stores!(
    list_walk_survives_churn,
    list_busiest_first,
    batch_get_keeps_request_order,
);

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
