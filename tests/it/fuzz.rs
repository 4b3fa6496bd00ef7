//! Property tests: raw protobuf bytes into every request validator (no
//! panic, whatever arrives), and random operation sequences through the
//! service's state machine compared with the reference model (metrics in
//! `Category::ALL` order, which is the fixture's order).

use occupancy::api::convert;
use occupancy::domain::{Applied, Batch, ChannelName, ListOrder, ListQuery, OccupancyState, Operation, SessionId};
use occupancy::proto::v1 as pb;
use proptest::prelude::*;
use prost::Message;

use crate::model::{Model, Op};

fn decode_and_validate(bytes: &[u8]) {
    if let Ok(r) = pb::ApplyRequest::decode(bytes) {
        let _ = convert::session(&r.session_id);
        let _ = convert::operations(&r.operations);
    }
    if let Ok(r) = pb::AttachRequest::decode(bytes) {
        let _ = convert::attach(&r.connection_id, &r.channel, &r.modes);
    }
    if let Ok(r) = pb::EnterPresenceRequest::decode(bytes) {
        let _ = convert::presence(&r.connection_id, &r.channel, &r.client_id, false);
    }
    if let Ok(r) = pb::SubscribeOccupancyRequest::decode(bytes) {
        let _ = convert::subscription(r, 8);
    }
    if let Ok(r) = pb::ListChannelsRequest::decode(bytes) {
        if let (Ok(order), Ok(by)) = (convert::list_order(r.order), convert::list_by_value(r.by)) {
            let _ = ListQuery::new(r.prefix, r.limit, &r.cursor, order, by);
        }
    }
    if let Ok(r) = pb::SyncSessionRequest::decode(bytes) {
        let _ = convert::held(&r.attachments);
        let _ = convert::ttl(r.ttl_ms);
    }
    if let Ok(r) = pb::KeepAliveRequest::decode(bytes) {
        let _ = convert::ttl(r.ttl_ms);
    }
    if let Ok(r) = pb::BatchGetOccupancyRequest::decode(bytes) {
        for c in r.channels {
            let _ = ChannelName::parse("channels", c);
        }
    }
}

/// Strings from every class that trips validators: empty, control
/// characters, `[`, zero-width and bidi marks, emoji, long ones.
fn odd_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("[meta]x".to_string()),
        Just("a\u{0}b".to_string()),
        Just("\u{7f}".to_string()),
        Just("\u{200b}\u{202e}\u{feff}".to_string()),
        Just("😀🇫🇷e\u{301}".to_string()),
        Just("x".repeat(1025)),
        Just("é".repeat(513)),
        "\\PC{0,40}",
        any::<String>(),
    ]
}

fn raw_operation() -> impl Strategy<Value = pb::Operation> {
    let modes = proptest::collection::vec(-2i32..9, 0..4);
    prop_oneof![
        (odd_string(), odd_string(), modes).prop_map(|(c, ch, m)| pb::Operation {
            op: Some(pb::operation::Op::Attach(pb::AttachOperation {
                connection_id: c,
                channel: ch,
                modes: m
            }))
        }),
        (odd_string(), odd_string()).prop_map(|(c, ch)| pb::Operation {
            op: Some(pb::operation::Op::Detach(pb::DetachOperation {
                connection_id: c,
                channel: ch
            }))
        }),
        (odd_string(), odd_string(), odd_string()).prop_map(|(c, ch, cl)| pb::Operation {
            op: Some(pb::operation::Op::Enter(pb::PresenceOperation {
                connection_id: c,
                channel: ch,
                client_id: cl
            }))
        }),
        Just(pb::Operation { op: None }),
    ]
}

fn to_model(op: &Operation) -> Op {
    match op {
        Operation::Attach {
            connection,
            channel,
            modes,
        } => Op::Attach {
            conn: connection.to_string(),
            channel: channel.to_string(),
            modes: modes.bits(),
        },
        Operation::Detach { connection, channel } => Op::Detach {
            conn: connection.to_string(),
            channel: channel.to_string(),
        },
        Operation::Enter {
            connection,
            channel,
            client,
        } => Op::Enter {
            conn: connection.to_string(),
            channel: channel.to_string(),
            client: client.to_string(),
        },
        Operation::Leave {
            connection,
            channel,
            client,
        } => Op::Leave {
            conn: connection.to_string(),
            channel: channel.to_string(),
            client: client.to_string(),
        },
    }
}

fn small_op() -> impl Strategy<Value = (usize, pb::Operation)> {
    let conn = (0..5u8).prop_map(|i| format!("c{i}"));
    let ch = (0..4u8).prop_map(|i| format!("ch{i}"));
    let client = (0..3u8).prop_map(|i| format!("u{i}"));
    let modes = proptest::collection::vec(1i32..7, 0..4);
    let op = prop_oneof![
        4 => (conn.clone(), ch.clone(), modes).prop_map(|(c, ch, m)| pb::operation::Op::Attach(pb::AttachOperation { connection_id: c, channel: ch, modes: m })),
        2 => (conn.clone(), ch.clone()).prop_map(|(c, ch)| pb::operation::Op::Detach(pb::DetachOperation { connection_id: c, channel: ch })),
        3 => (conn.clone(), ch.clone(), client.clone()).prop_map(|(c, ch, cl)| pb::operation::Op::Enter(pb::PresenceOperation { connection_id: c, channel: ch, client_id: cl })),
        2 => (conn, ch, client).prop_map(|(c, ch, cl)| pb::operation::Op::Leave(pb::PresenceOperation { connection_id: c, channel: ch, client_id: cl })),
    ];
    (0..3usize, op.prop_map(|op| pb::Operation { op: Some(op) }))
}

fn results_of(a: Applied) -> Vec<occupancy::domain::OpResult> {
    match a {
        Applied::Done { results, .. } => results,
        other => panic!("an unconditional write was refused: {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn raw_bytes_never_panic_a_validator(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        decode_and_validate(&bytes);
    }

    #[test]
    fn encoded_odd_requests_never_panic_and_valid_ones_match_the_model(
        ops in proptest::collection::vec(raw_operation(), 0..30),
        session in odd_string(),
    ) {
        let req = pb::ApplyRequest { session_id: session, operations: ops, include_metrics: false, sequence: 0, session_epoch: 0 };
        decode_and_validate(&req.encode_to_vec());
        let (Ok(session), Ok(ops)) = (convert::session(&req.session_id), convert::operations(&req.operations)) else {
            return Ok(());
        };
        let mut state = OccupancyState::new();
        let mut model = Model::default();
        let results = results_of(state.apply(0, &session, 60_000, Batch::new(&ops, true), &mut Vec::new()));
        for (op, r) in ops.iter().zip(&results) {
            let accepted = model.apply(session.as_str(), &to_model(op));
            prop_assert_eq!(accepted, r.status == occupancy::domain::OpStatus::Ok);
        }
        for op in &ops {
            let m = state.metrics(op.channel()).to_array();
            prop_assert_eq!(m, model.metrics(op.channel().as_str()));
        }
    }

    #[test]
    fn state_machine_matches_the_model(steps in proptest::collection::vec((small_op(), 0..100u8), 1..120)) {
        let mut state = OccupancyState::new();
        let mut model = Model::default();
        let sessions: Vec<SessionId> = (0..3).map(|i| SessionId::parse("s", format!("s{i}")).unwrap()).collect();
        for ((s, op), roll) in steps {
            let session = &sessions[s];
            if roll < 5 {
                state.close_session(0, session, &mut Vec::new());
                model.expire(session.as_str());
                continue;
            }
            let ops = convert::operations(std::slice::from_ref(&op)).unwrap();
            let r = results_of(state.apply(0, session, 60_000, Batch::new(&ops, false), &mut Vec::new()));
            let accepted = model.apply(session.as_str(), &to_model(&ops[0]));
            prop_assert_eq!(accepted, r[0].status == occupancy::domain::OpStatus::Ok);
        }
        for i in 0..4 {
            let ch = ChannelName::parse("c", format!("ch{i}")).unwrap();
            prop_assert_eq!(state.metrics(&ch).to_array(), model.metrics(ch.as_str()));
        }
        let q = ListQuery::new(String::new(), 1000, "", ListOrder::Name, false).unwrap();
        let listed: Vec<String> = state.list(&q).channels.into_iter().map(|c| c.name.to_string()).collect();
        prop_assert_eq!(listed, model.active());
        // after closing everything, nothing is left
        for s in &sessions {
            state.close_session(0, s, &mut Vec::new());
        }
        prop_assert!(state.list(&q).channels.is_empty());
    }
}
