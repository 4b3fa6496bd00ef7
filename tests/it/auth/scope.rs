//! What a key's scope lets it see: filtered listings, prefix
//! subscriptions, and streams bound to a token's life.

use std::collections::BTreeSet;
use std::time::Duration;

use occupancy::auth::token::mint_until;
use occupancy::proto::v1 as pb;
use pb::Mode;
use tonic::Code;

use super::{attach, TTL};
use crate::fixture::*;
use crate::support::auth::{key_entry, key_file_text, now, server, with, As, KeyFile, ADMIN, DASH, FE};
use crate::support::sub::Sub;
use crate::support::Harness;

both_stores!(
    a_filtered_listing_walks_exactly_the_readable_channels,
    prefix_subscriptions_need_the_whole_prefix,
    a_token_bound_stream_ends_at_expiry_and_resumes,
);

/// 2,000 readable channels among 2,000 others interleaved by name, walked
/// in small pages: exactly the readable ones, no repeats, no empty page.
async fn a_filtered_listing_walks_exactly_the_readable_channels(h: Harness) {
    let mut readable = BTreeSet::new();
    let mut caps = String::from("{ ");
    for i in 0..4000 {
        if i % 2 == 0 {
            let name = format!("w:{i:05}");
            caps.push_str(&format!("\"{name}\" = [\"read\"], "));
            readable.insert(name);
        }
    }
    caps.push('}');
    let keys = KeyFile::new(&key_file_text(&key_entry("some", "some", &caps)));
    let s = server(&h, &keys).await;
    let mut admin = with(&s, ADMIN).await;
    for c in 0..4 {
        let ops = (c * 1000..(c + 1) * 1000)
            .map(|i| attach_op(&format!("c{c}"), &format!("w:{i:05}"), &[Mode::Subscribe]))
            .collect();
        admin.w.apply(batch("loader", ops)).await.unwrap();
    }
    // the walks below may outlast the default lease on a loaded machine
    admin
        .w
        .keep_alive(pb::KeepAliveRequest {
            session_id: "loader".into(),
            ttl_ms: 600_000,
        })
        .await
        .unwrap();
    // a channel outside the prefix the key also cannot read
    admin.w.attach(attach("x", "rooms:1")).await.unwrap();
    let mut some = with(&s, "some:some").await;
    for (limit, order) in [
        (7, pb::ListOrder::Name),
        (50, pb::ListOrder::Name),
        (7, pb::ListOrder::ConnectionsDesc),
    ] {
        for prefix in ["", "w:"] {
            let mut seen = Vec::new();
            let mut cursor = String::new();
            for page_no in 0..10_000 {
                let page = some
                    .r
                    .list_channels(pb::ListChannelsRequest {
                        prefix: prefix.into(),
                        limit,
                        cursor: cursor.clone(),
                        order: order as i32,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert!(
                    !page.channels.is_empty() || page.next_cursor.is_empty(),
                    "empty page {page_no} with more to follow"
                );
                assert!(page.channels.len() <= limit as usize);
                seen.extend(page.channels.into_iter().map(|c| c.channel_id));
                if page.next_cursor.is_empty() {
                    break;
                }
                cursor = page.next_cursor;
            }
            let set: BTreeSet<_> = seen.iter().cloned().collect();
            assert_eq!(set.len(), seen.len(), "a channel repeated ({order:?}, {limit})");
            assert_eq!(set, readable, "({order:?}, limit {limit}, prefix {prefix:?})");
            if order == pb::ListOrder::Name {
                assert!(seen.windows(2).all(|w| w[0] < w[1]), "name order");
            }
        }
    }
    // a prefix under which nothing is readable: one empty, final page
    let page = some
        .r
        .list_channels(pb::ListChannelsRequest {
            prefix: "rooms:".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(page.channels.is_empty() && page.next_cursor.is_empty());
}

/// A subscription opened with `a`'s credential.
async fn subscribe(a: &mut As, req: pb::SubscribeOccupancyRequest) -> Sub {
    Sub::from_stream(a.r.subscribe_occupancy(req).await.unwrap().into_inner())
}

/// Prefix subscriptions only where the whole prefix is covered.
async fn prefix_subscriptions_need_the_whole_prefix(h: Harness) {
    let keys = KeyFile::new(&key_file_text(""));
    let s = server(&h, &keys).await;
    let mut dash = with(&s, DASH).await;
    for prefix in ["", "room", "games:"] {
        let err = dash
            .r
            .subscribe_occupancy(pb::SubscribeOccupancyRequest {
                prefix: prefix.into(),
                channels: if prefix.is_empty() {
                    vec!["rooms:1".into()]
                } else {
                    vec![]
                },
                ..Default::default()
            })
            .await
            .map(drop);
        if prefix.is_empty() {
            // no prefix: the named channel is readable
            assert!(err.is_ok(), "{err:?}");
            continue;
        }
        let err = err.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{prefix}: {err:?}");
        assert!(err.message().contains(prefix), "{err:?}");
    }
    let mut sub = subscribe(
        &mut dash,
        pb::SubscribeOccupancyRequest {
            prefix: "rooms:eu:".into(),
            ..Default::default()
        },
    )
    .await;
    let mut fe = with(&s, FE).await;
    fe.w.attach(attach("c-1", "rooms:eu:1")).await.unwrap();
    let e = sub.next().await;
    assert_eq!(e.channel, "rooms:eu:1");
    assert_eq!(e.metrics.unwrap().connections, 1);
}

/// A stream opened with a token ends UNAUTHENTICATED when the token
/// expires; a fresh token with `resume_from` misses nothing.
async fn a_token_bound_stream_ends_at_expiry_and_resumes(h: Harness) {
    let keys = KeyFile::new(&key_file_text(""));
    let s = server(&h, &keys).await;
    let mut fe = with(&s, FE).await;
    fe.w.attach(attach("c-1", "rooms:1")).await.unwrap();
    let exp = now() + 2;
    let token = mint_until("dash", "dash-secret", None, exp).unwrap();
    let mut dash = with(&s, &token).await;
    let mut sub = subscribe(
        &mut dash,
        pb::SubscribeOccupancyRequest {
            channels: vec!["rooms:1".into()],
            ..Default::default()
        },
    )
    .await;
    let first = sub.next().await;
    assert_eq!(first.metrics.unwrap().connections, 1);
    fe.w.attach(attach("c-2", "rooms:1")).await.unwrap();
    let second = sub.next().await;
    assert_eq!(second.metrics.unwrap().connections, 2);
    // the stream ends with UNAUTHENTICATED saying so, within the token's
    // life plus a margin
    let end = sub
        .next_within(Duration::from_secs(10))
        .await
        .expect("the stream ends")
        .expect_err("with a status");
    assert_eq!(end.code(), Code::Unauthenticated, "{end:?}");
    assert!(end.message().contains("expired"), "{end:?}");
    assert!(now() >= exp);
    // a change while away
    fe.w.attach(attach("c-3", "rooms:1")).await.unwrap();
    let fresh = mint_until("dash", "dash-secret", None, now() + 600).unwrap();
    let mut dash = with(&s, &fresh).await;
    let mut sub = subscribe(
        &mut dash,
        pb::SubscribeOccupancyRequest {
            channels: vec!["rooms:1".into()],
            resume_from: second.id.clone(),
            ..Default::default()
        },
    )
    .await;
    let caught_up = sub.next().await;
    assert_eq!(caught_up.metrics.unwrap().connections, 3);
    assert!(caught_up.id > second.id);
}
