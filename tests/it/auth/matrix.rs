//! Every RPC × every kind of credential, and writes or batch reads with
//! one forbidden channel refused whole.

use occupancy::auth::token::mint_until;
use occupancy::proto::v1 as pb;
use pb::Mode;
use tonic::Code;

use super::{attach, close, detach_batch, enter, everything, fe_holds_alice, keep_alive, leave, sync, TTL};
use crate::fixture::*;
use crate::support::auth::{key_entry, key_file_text, now, server, with, As, KeyFile, ADMIN, DASH, FE};
use crate::support::Harness;

both_stores!(
    every_rpc_gets_the_status_its_credential_earns,
    an_apply_with_one_forbidden_operation_changes_nothing,
);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Rpc {
    Attach,
    Detach,
    Enter,
    Leave,
    Apply,
    KeepAlive,
    Close,
    Sync,
    Get,
    BatchGet,
    List,
    Subscribe,
}

impl Rpc {
    const ALL: [Rpc; 12] = [
        Rpc::Attach,
        Rpc::Detach,
        Rpc::Enter,
        Rpc::Leave,
        Rpc::Apply,
        Rpc::KeepAlive,
        Rpc::Close,
        Rpc::Sync,
        Rpc::Get,
        Rpc::BatchGet,
        Rpc::List,
        Rpc::Subscribe,
    ];

    fn writes(self) -> bool {
        matches!(
            self,
            Rpc::Attach | Rpc::Detach | Rpc::Enter | Rpc::Leave | Rpc::Apply | Rpc::KeepAlive | Rpc::Close | Rpc::Sync
        )
    }

    /// A key that may not make this call, and one that may.
    fn keys(self) -> (&'static str, &'static str) {
        match self {
            r if r.writes() => (DASH, FE),
            Rpc::Get | Rpc::BatchGet | Rpc::List | Rpc::Subscribe => (FE, DASH),
            _ => unreachable!(),
        }
    }

    /// Makes the call on channel `rooms:1` (session `fe-1`); the status.
    async fn call(self, a: &mut As) -> Code {
        let ch = "rooms:1";
        let r = match self {
            Rpc::Attach => a.w.attach(attach("c-new", ch)).await.map(drop),
            Rpc::Detach => {
                a.w.detach(pb::DetachRequest {
                    session_id: "fe-1".into(),
                    connection_id: "c-1".into(),
                    channel: ch.into(),
                })
                .await
                .map(drop)
            }
            Rpc::Enter => a.w.enter_presence(enter("fe-1", "mallory")).await.map(drop),
            Rpc::Leave => a.w.leave_presence(leave("fe-1", "alice")).await.map(drop),
            Rpc::Apply => a.w.apply(detach_batch("fe-1")).await.map(drop),
            Rpc::KeepAlive => a.w.keep_alive(keep_alive("fe-1")).await.map(drop),
            Rpc::Close => a.w.close_session(close("fe-1")).await.map(drop),
            Rpc::Sync => a.w.sync_session(sync("fe-1")).await.map(drop),
            Rpc::Get => {
                a.r.get_occupancy(pb::GetOccupancyRequest { channel: ch.into() })
                    .await
                    .map(drop)
            }
            Rpc::BatchGet => {
                a.r.batch_get_occupancy(pb::BatchGetOccupancyRequest {
                    channels: vec![ch.into()],
                })
                .await
                .map(drop)
            }
            Rpc::List => {
                a.r.list_channels(pb::ListChannelsRequest {
                    prefix: "rooms:".into(),
                    ..Default::default()
                })
                .await
                .map(drop)
            }
            Rpc::Subscribe => {
                a.r.subscribe_occupancy(pb::SubscribeOccupancyRequest {
                    channels: vec![ch.into()],
                    ..Default::default()
                })
                .await
                .map(drop)
            }
        };
        match r {
            Ok(()) => Code::Ok,
            Err(s) => {
                if matches!(s.code(), Code::PermissionDenied) {
                    assert!(
                        s.message().contains("rooms:1") || s.message().contains("may not"),
                        "{s:?}"
                    );
                }
                if s.code() == Code::Unauthenticated && s.message().contains("expired") {
                    return Code::DeadlineExceeded; // marks "said it expired"
                }
                s.code()
            }
        }
    }
}

/// Every RPC × every kind of credential: exactly the status the issue
/// gives, and the store unchanged after every refused call.
async fn every_rpc_gets_the_status_its_credential_earns(h: Harness) {
    let keys = KeyFile::new(&key_file_text(""));
    let s = server(&h, &keys).await;
    let mut admin = with(&s, ADMIN).await;
    for rpc in Rpc::ALL {
        // a fresh state per RPC: fe's session fe-1 holds c-1 on rooms:1
        // with alice entered
        let _ = admin.w.close_session(close("fe-1")).await;
        fe_holds_alice(&s).await;
        let before = everything(&mut admin).await;
        assert!(!before.is_empty());
        let (lacking, holding) = rpc.keys();
        let (lacking_id, lacking_secret) = lacking.split_once(':').unwrap();
        let (holding_id, holding_secret) = holding.split_once(':').unwrap();
        let expired = mint_until(holding_id, holding_secret, None, now() - 10).unwrap();
        let stranger = mint_until("stranger", "whatever", None, now() + 600).unwrap();
        let _ = lacking_secret;
        let cases: [(&str, String, Code); 7] = [
            ("no credential", String::new(), Code::Unauthenticated),
            ("unknown key", "nobody:secret".into(), Code::Unauthenticated),
            ("wrong secret", format!("{holding_id}:wrong"), Code::Unauthenticated),
            ("expired token", expired, Code::DeadlineExceeded),
            ("token of an unknown key", stranger, Code::Unauthenticated),
            (
                "key lacking the capability",
                lacking.to_string(),
                Code::PermissionDenied,
            ),
            ("key with the capability", holding.to_string(), Code::Ok),
        ];
        for (what, credential, want) in cases {
            let mut a = with(&s, &credential).await;
            let got = rpc.call(&mut a).await;
            assert_eq!(got, want, "{rpc:?} with {what} ({lacking_id})");
            if want != Code::Ok {
                assert_eq!(
                    everything(&mut admin).await,
                    before,
                    "{rpc:?} with {what} changed the store"
                );
            }
        }
    }
}

/// An Apply with one forbidden operation is refused whole.
async fn an_apply_with_one_forbidden_operation_changes_nothing(h: Harness) {
    let keys = KeyFile::new(&key_file_text(&key_entry(
        "rooms-fe",
        "rf",
        r#"{ "rooms:*" = ["report"] }"#,
    )));
    let s = server(&h, &keys).await;
    let mut a = with(&s, "rooms-fe:rf").await;
    let mut admin = with(&s, ADMIN).await;
    let ops = vec![
        attach_op("c", "rooms:1", &[Mode::Subscribe]),
        attach_op("c", "games:1", &[Mode::Subscribe]),
    ];
    let err = a.w.apply(batch("s", ops)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("games:1"), "{err:?}");
    assert!(everything(&mut admin).await.is_empty());
    // batch reads too: refused whole, naming the channel
    let mut dash = with(&s, DASH).await;
    let err = dash
        .r
        .batch_get_occupancy(pb::BatchGetOccupancyRequest {
            channels: vec!["rooms:1".into(), "games:1".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("games:1"), "{err:?}");
}
