//! Every bad input gets INVALID_ARGUMENT naming the field and changes
//! nothing; odd but valid Unicode is served as given.

use occupancy::proto::v1 as pb;
use pb::Mode;

use super::{LONG_TTL_MS, TTL};
use crate::fixture::*;
use crate::support::Harness;

all_stores!(bad_input_is_rejected_and_changes_nothing,);

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
