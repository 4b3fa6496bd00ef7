//! Access control through gRPC, on both stores: the credential matrix of
//! every RPC, filtered listings, prefix subscriptions, token-bound streams,
//! session ownership, key file reloads; and the safe default of the real
//! binary.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use occupancy::auth::keys::secret_digest_hex;
use occupancy::auth::token::mint_until;
use occupancy::auth::Authenticator;
use occupancy::proto::v1 as pb;
use pb::Mode;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::Code;

use crate::fixture::*;
use crate::subscribe::Sub;
use crate::support::{eventually, Harness, TestServer};

const TTL: Duration = Duration::from_secs(120);

/// Adds `authorization: Bearer …` to every call (none when empty).
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    pub fn new(credential: &str) -> Self {
        if credential.is_empty() {
            return Self(None);
        }
        Self(Some(format!("Bearer {credential}").parse().expect("ascii")))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type R = pb::occupancy_service_client::OccupancyServiceClient<InterceptedService<Channel, Bearer>>;
pub type W = pb::connection_service_client::ConnectionServiceClient<InterceptedService<Channel, Bearer>>;

/// Clients of one server holding one credential.
pub struct As {
    pub r: R,
    pub w: W,
}

pub async fn with(s: &TestServer, credential: &str) -> As {
    let ch = s.channel().await;
    As {
        r: pb::occupancy_service_client::OccupancyServiceClient::with_interceptor(ch.clone(), Bearer::new(credential)),
        w: pb::connection_service_client::ConnectionServiceClient::with_interceptor(ch, Bearer::new(credential)),
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The test's keys: name → (secret, capabilities as TOML inline table).
pub const KEYS: &[(&str, &str, &str)] = &[
    ("admin", "admin-secret", r#"{ "*" = ["*"] }"#),
    ("fe", "fe-secret", r#"{ "*" = ["report"] }"#),
    ("fe2", "fe2-secret", r#"{ "*" = ["report"] }"#),
    ("dash", "dash-secret", r#"{ "rooms:*" = ["read", "subscribe"] }"#),
];

pub fn key_file_text(extra: &str) -> String {
    let mut s = String::new();
    for (id, secret, caps) in KEYS {
        s.push_str(&format!(
            "[keys.{id}]\nsecret_sha256 = \"{}\"\ncapabilities = {caps}\n\n",
            secret_digest_hex(secret)
        ));
    }
    s.push_str(extra);
    s
}

/// A key file in a temporary directory.
pub struct KeyFile {
    pub dir: tempfile::TempDir,
}

impl KeyFile {
    pub fn new(text: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keys.toml"), text).unwrap();
        Self { dir }
    }
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("keys.toml")
    }
    /// Replaces the file atomically (write and rename, as editors and
    /// config managers do).
    pub fn replace(&self, text: &str) {
        let tmp = self.dir.path().join("keys.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.path()).unwrap();
    }
}

pub fn authenticator(path: &Path) -> Arc<Authenticator> {
    Arc::new(Authenticator::from_file(path.to_path_buf()).expect("key file"))
}

/// A server replica of `h` with access control from `keys`.
pub async fn server(h: &Harness, keys: &KeyFile) -> TestServer {
    server_with(h, authenticator(&keys.path())).await
}

/// A server replica of `h` with access control by `auth`.
pub async fn server_with(h: &Harness, auth: Arc<Authenticator>) -> TestServer {
    let mut c = h.config();
    c.auth = Some(auth);
    TestServer::start(c, h.store()).await
}

const ADMIN: &str = "admin:admin-secret";
const FE: &str = "fe:fe-secret";
const FE2: &str = "fe2:fe2-secret";
const DASH: &str = "dash:dash-secret";

/// Everything the store holds, as a full-access key sees it: every
/// channel with its metrics.
async fn everything(a: &mut As) -> Vec<(String, [u32; 9])> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    for _ in 0..1000 {
        let page =
            a.r.list_channels(pb::ListChannelsRequest {
                limit: 1000,
                cursor: cursor.clone(),
                by: pb::ListBy::Value as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for c in page.channels {
            let m = c
                .status
                .and_then(|s| s.occupancy)
                .and_then(|o| o.metrics)
                .unwrap_or_default();
            out.push((c.channel_id, arr(&m)));
        }
        if page.next_cursor.is_empty() {
            return out;
        }
        cursor = page.next_cursor;
    }
    panic!("more than 1000 pages");
}

fn attach(conn: &str, channel: &str) -> pb::AttachRequest {
    pb::AttachRequest {
        session_id: "fe-1".into(),
        connection_id: conn.into(),
        channel: channel.into(),
        modes: crate::support::modes(&[Mode::Presence, Mode::Subscribe]),
    }
}

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
            Rpc::Enter => {
                a.w.enter_presence(pb::EnterPresenceRequest {
                    session_id: "fe-1".into(),
                    connection_id: "c-1".into(),
                    channel: ch.into(),
                    client_id: "mallory".into(),
                })
                .await
                .map(drop)
            }
            Rpc::Leave => {
                a.w.leave_presence(pb::LeavePresenceRequest {
                    session_id: "fe-1".into(),
                    connection_id: "c-1".into(),
                    channel: ch.into(),
                    client_id: "alice".into(),
                })
                .await
                .map(drop)
            }
            Rpc::Apply => {
                a.w.apply(pb::ApplyRequest {
                    session_id: "fe-1".into(),
                    operations: vec![pb::Operation {
                        op: Some(detach_op("c-1", ch)),
                    }],
                    ..Default::default()
                })
                .await
                .map(drop)
            }
            Rpc::KeepAlive => {
                a.w.keep_alive(pb::KeepAliveRequest {
                    session_id: "fe-1".into(),
                    ttl_ms: 60_000,
                })
                .await
                .map(drop)
            }
            Rpc::Close => {
                a.w.close_session(pb::CloseSessionRequest {
                    session_id: "fe-1".into(),
                })
                .await
                .map(drop)
            }
            Rpc::Sync => {
                a.w.sync_session(pb::SyncSessionRequest {
                    session_id: "fe-1".into(),
                    attachments: vec![],
                    ..Default::default()
                })
                .await
                .map(drop)
            }
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
        let _ = admin
            .w
            .close_session(pb::CloseSessionRequest {
                session_id: "fe-1".into(),
            })
            .await;
        let mut fe = with(&s, FE).await;
        fe.w.attach(attach("c-1", "rooms:1")).await.unwrap();
        fe.w.enter_presence(pb::EnterPresenceRequest {
            session_id: "fe-1".into(),
            connection_id: "c-1".into(),
            channel: "rooms:1".into(),
            client_id: "alice".into(),
        })
        .await
        .unwrap();
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
    let keys = KeyFile::new(&key_file_text(&format!(
        "[keys.rooms-fe]\nsecret_sha256 = \"{}\"\ncapabilities = {{ \"rooms:*\" = [\"report\"] }}\n",
        secret_digest_hex("rf")
    )));
    let s = server(&h, &keys).await;
    let mut a = with(&s, "rooms-fe:rf").await;
    let mut admin = with(&s, ADMIN).await;
    let err =
        a.w.apply(pb::ApplyRequest {
            session_id: "s".into(),
            operations: vec![
                pb::Operation {
                    op: Some(attach_op("c", "rooms:1", &[Mode::Subscribe])),
                },
                pb::Operation {
                    op: Some(attach_op("c", "games:1", &[Mode::Subscribe])),
                },
            ],
            ..Default::default()
        })
        .await
        .unwrap_err();
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
    let keys = KeyFile::new(&key_file_text(&format!(
        "[keys.some]\nsecret_sha256 = \"{}\"\ncapabilities = {caps}\n",
        secret_digest_hex("some")
    )));
    let s = server(&h, &keys).await;
    let mut admin = with(&s, ADMIN).await;
    for c in 0..4 {
        let ops = (c * 1000..(c + 1) * 1000)
            .map(|i| pb::Operation {
                op: Some(attach_op(&format!("c{c}"), &format!("w:{i:05}"), &[Mode::Subscribe])),
            })
            .collect();
        admin
            .w
            .apply(pb::ApplyRequest {
                session_id: "loader".into(),
                operations: ops,
                ..Default::default()
            })
            .await
            .unwrap();
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
    let stream = dash
        .r
        .subscribe_occupancy(pb::SubscribeOccupancyRequest {
            prefix: "rooms:eu:".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut sub = Sub::from_stream(stream);
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
    let stream = dash
        .r
        .subscribe_occupancy(pb::SubscribeOccupancyRequest {
            channels: vec!["rooms:1".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut sub = Sub::from_stream(stream);
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
    let stream = dash
        .r
        .subscribe_occupancy(pb::SubscribeOccupancyRequest {
            channels: vec!["rooms:1".into()],
            resume_from: second.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut sub = Sub::from_stream(stream);
    let caught_up = sub.next().await;
    assert_eq!(caught_up.metrics.unwrap().connections, 3);
    assert!(caught_up.id > second.id);
}

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
    let mut fe = with(&a, FE).await;
    fe.w.attach(attach("c-1", "rooms:1")).await.unwrap();
    fe.w.enter_presence(pb::EnterPresenceRequest {
        session_id: "fe-1".into(),
        connection_id: "c-1".into(),
        channel: "rooms:1".into(),
        client_id: "alice".into(),
    })
    .await
    .unwrap();
    let before = everything(&mut admin).await;
    let other_session = |conn: &str| pb::AttachRequest {
        session_id: "fe2-1".into(),
        ..attach(conn, "rooms:2")
    };
    for replica in [&b, &c] {
        let mut fe2 = with(replica, FE2).await;
        let denied: Vec<(&str, Result<(), tonic::Status>)> = vec![
            (
                "keep alive",
                fe2.w
                    .keep_alive(pb::KeepAliveRequest {
                        session_id: "fe-1".into(),
                        ttl_ms: 60_000,
                    })
                    .await
                    .map(drop),
            ),
            (
                "close",
                fe2.w
                    .close_session(pb::CloseSessionRequest {
                        session_id: "fe-1".into(),
                    })
                    .await
                    .map(drop),
            ),
            (
                "sync",
                fe2.w
                    .sync_session(pb::SyncSessionRequest {
                        session_id: "fe-1".into(),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
            ("attach into", fe2.w.attach(attach("c-9", "rooms:1")).await.map(drop)),
            (
                "apply into",
                fe2.w
                    .apply(pb::ApplyRequest {
                        session_id: "fe-1".into(),
                        operations: vec![pb::Operation {
                            op: Some(detach_op("c-1", "rooms:1")),
                        }],
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
            (
                "take over by attach",
                fe2.w.attach(other_session("c-1")).await.map(drop),
            ),
            (
                "take over by enter",
                fe2.w
                    .enter_presence(pb::EnterPresenceRequest {
                        session_id: "fe2-1".into(),
                        connection_id: "c-1".into(),
                        channel: "rooms:1".into(),
                        client_id: "mallory".into(),
                    })
                    .await
                    .map(drop),
            ),
            (
                "take over in a batch",
                fe2.w
                    .apply(pb::ApplyRequest {
                        session_id: "fe2-1".into(),
                        operations: vec![
                            pb::Operation {
                                op: Some(attach_op("c-7", "rooms:2", &[Mode::Subscribe])),
                            },
                            pb::Operation {
                                op: Some(attach_op("c-1", "rooms:2", &[Mode::Subscribe])),
                            },
                        ],
                        ..Default::default()
                    })
                    .await
                    .map(drop),
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
    let ka = fe_c
        .w
        .keep_alive(pb::KeepAliveRequest {
            session_id: "fe-1".into(),
            ttl_ms: 60_000,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ka.status, pb::SessionStatus::Active as i32);
    fe_c.w
        .attach(pb::AttachRequest {
            session_id: "fe-1b".into(),
            ..attach("c-1", "rooms:1")
        })
        .await
        .unwrap();
    // fe's old session now holds nothing of c-1: closing it leaves rooms:1
    fe_c.w
        .close_session(pb::CloseSessionRequest {
            session_id: "fe-1".into(),
        })
        .await
        .unwrap();
    let now_state = everything(&mut admin).await;
    assert_eq!(now_state.len(), 1, "{now_state:?}");
    assert_eq!(now_state[0].1[0], 1, "c-1 still attached through fe-1b");
}

both_stores!(
    sessions_belong_to_the_key_that_opened_them,
    every_rpc_gets_the_status_its_credential_earns,
    an_apply_with_one_forbidden_operation_changes_nothing,
    a_filtered_listing_walks_exactly_the_readable_channels,
    prefix_subscriptions_need_the_whole_prefix,
    a_token_bound_stream_ends_at_expiry_and_resumes,
);

/// Reloading the key file under load fails no call; a broken file keeps
/// the old keys; a new key in a good file works once loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_reload_under_load_fails_no_call() {
    let h = Harness::memory(TTL);
    let keys = KeyFile::new(&key_file_text(""));
    let auth = authenticator(&keys.path());
    let s = server_with(&h, auth.clone()).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for w in 0..4 {
        let mut a = with(&s, if w % 2 == 0 { FE } else { DASH }).await;
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let mut calls = 0u32;
            while !stop.load(Ordering::Relaxed) && calls < 1_000_000 {
                if w % 2 == 0 {
                    a.w.attach(attach(&format!("c{w}"), "rooms:1"))
                        .await
                        .expect("write during reload");
                } else {
                    a.r.get_occupancy(pb::GetOccupancyRequest {
                        channel: "rooms:1".into(),
                    })
                    .await
                    .expect("read during reload");
                }
                calls += 1;
            }
            calls
        }));
    }
    // rewrites adding a key each time, picked up on change
    for round in 0..3 {
        let text = key_file_text(&format!(
            "[keys.new{round}]\nsecret_sha256 = \"{}\"\ncapabilities = {{ \"*\" = [\"read\"] }}\n",
            secret_digest_hex("n")
        ));
        keys.replace(&text);
        let mut n = with(&s, &format!("new{round}:n")).await;
        eventually(Duration::from_secs(10), "the new key works", || {
            let mut r = n.r.clone();
            async move {
                r.get_occupancy(pb::GetOccupancyRequest {
                    channel: "rooms:1".into(),
                })
                .await
                .ok()
            }
        })
        .await;
        let _ = &mut n;
    }
    // a broken file: the old keys stay (new2 still works after the
    // watcher has certainly looked at it; the broken text is noticed as a
    // change, so a later good file is still picked up)
    let failed = auth.counters().reload_failures.load(Ordering::Relaxed);
    keys.replace("[keys.new2\nthis is not toml");
    let mut later = with(&s, "later:l").await;
    eventually(Duration::from_secs(10), "the broken file is tried", || {
        let tried = auth.counters().reload_failures.load(Ordering::Relaxed) > failed;
        async move { tried.then_some(()) }
    })
    .await;
    let mut n2 = with(&s, "new2:n").await;
    n2.r.get_occupancy(pb::GetOccupancyRequest {
        channel: "rooms:1".into(),
    })
    .await
    .expect("the previous keys stay after a bad file");
    keys.replace(&key_file_text(&format!(
        "[keys.later]\nsecret_sha256 = \"{}\"\ncapabilities = {{ \"*\" = [\"read\"] }}\n",
        secret_digest_hex("l")
    )));
    eventually(Duration::from_secs(10), "a good file after a bad one", || {
        let mut r = later.r.clone();
        async move {
            r.get_occupancy(pb::GetOccupancyRequest {
                channel: "rooms:1".into(),
            })
            .await
            .ok()
        }
    })
    .await;
    let _ = &mut later;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for l in load {
        total += l.await.expect("no call failed");
    }
    assert!(total > 0);
}

/// The real binary: a non-loopback address without keys is refused before
/// binding, naming the way out; `occupancy key` makes a key the service
/// takes, and the CLI sends it from `OCCUPANCY_KEY` or a token from
/// `--token`; health stays open without a credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_open_non_loopback_and_the_cli_sends_credentials() {
    use crate::support::process::{binary, Proc};
    use std::process::Command;
    let out = Command::new(binary())
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--allow-anonymous") && err.contains("--auth-keys"),
        "{err}"
    );

    let made = Command::new(binary())
        .args(["key", "ops", "-c", "*=read,report"])
        .output()
        .unwrap();
    assert!(made.status.success());
    let text = String::from_utf8(made.stdout).unwrap();
    let credential = text
        .lines()
        .nth(1)
        .and_then(|l| l.strip_prefix("# "))
        .expect("the credential line")
        .to_string();
    let keys = KeyFile::new(&text);
    let p = Proc::spawn(&["--auth-keys", keys.path().to_str().unwrap()]);
    let url = p.url();
    let get = |env: Option<(&str, &str)>, extra: &[&str]| {
        let mut c = Command::new(binary());
        c.args(["get", "rooms:1", "--json", "--endpoint", &url]).args(extra);
        c.env_remove("OCCUPANCY_KEY").env_remove("OCCUPANCY_TOKEN");
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let out = get(Some(("OCCUPANCY_KEY", &credential)), &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = get(None, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing credential"));
    let token = Command::new(binary())
        .args(["token", "-c", "rooms:*=read", "--ttl", "5m"])
        .env("OCCUPANCY_KEY", &credential)
        .output()
        .unwrap();
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).unwrap();
    let out = get(None, &["--token", token.trim()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // the token narrows the key: games:1 is not readable with it
    let mut c = Command::new(binary());
    let out = c
        .args(["get", "games:1", "--endpoint", &url, "--token", token.trim()])
        .env_remove("OCCUPANCY_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("games:1"));
    // health needs no credential
    let ch = Channel::from_shared(url.clone()).unwrap().connect().await.unwrap();
    let h = tonic_health::pb::health_client::HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health stays open");
    assert_eq!(
        h.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

/// The example key file in `deploy/` loads.
#[test]
fn the_example_key_file_loads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/auth-keys.example.toml");
    let auth = Authenticator::from_file(path).expect("the example key file loads");
    assert!(auth.enabled());
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

/// The HTTP side with a key file: the same credentials (`Authorization:
/// Bearer …`) and capabilities as gRPC, 401 for an unknown caller and 403
/// for a known one that may not; health stays open.
#[tokio::test]
async fn the_http_side_checks_the_same_credentials_and_capabilities() {
    let h = Harness::memory(TTL);
    let keys = KeyFile::new(&key_file_text(""));
    let mut c = h.config();
    c.auth = Some(authenticator(&keys.path()));
    let s = TestServer::start_with_http(c, h.store()).await;
    let mut fe = with(&s, FE).await;
    for (conn, ch) in [("c1", "rooms:1"), ("c2", "games:1")] {
        fe.w.attach(attach(conn, ch)).await.expect("attach");
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let base = s.http_url();
    let call = |method: reqwest::Method, path: &str, credential: Option<&str>, body: Option<&str>| {
        let mut r = http.request(method, format!("{base}{path}"));
        if let Some(c) = credential {
            r = r.header("authorization", format!("Bearer {c}"));
        }
        if let Some(b) = body {
            r = r.body(b.to_string());
        }
        r.send()
    };
    let get = reqwest::Method::GET;
    let status_code = |r: &reqwest::Response| r.status().as_u16();
    // (path, credential, expected status, expected error code)
    let cases: &[(&str, Option<&str>, u16, &str)] = &[
        ("/channels/rooms:1", None, 401, "UNAUTHENTICATED"),
        ("/channels/rooms:1", Some("dash:wrong"), 401, "UNAUTHENTICATED"),
        ("/channels/rooms:1", Some("nobody:x"), 401, "UNAUTHENTICATED"),
        ("/channels/rooms:1", Some(FE), 403, "PERMISSION_DENIED"),
        ("/channels/games:1", Some(DASH), 403, "PERMISSION_DENIED"),
        ("/channels", None, 401, "UNAUTHENTICATED"),
        ("/channels", Some(FE), 403, "PERMISSION_DENIED"),
        ("/stats", None, 401, "UNAUTHENTICATED"),
        ("/stats", Some(DASH), 403, "PERMISSION_DENIED"),
        ("/metrics", None, 401, "UNAUTHENTICATED"),
        ("/metrics", Some(DASH), 403, "PERMISSION_DENIED"),
        (
            "/channels/games:1/occupancy/stream",
            Some(DASH),
            403,
            "PERMISSION_DENIED",
        ),
        ("/occupancy/stream?prefix=", Some(DASH), 403, "PERMISSION_DENIED"),
        ("/occupancy/stream?prefix=rooms:", None, 401, "UNAUTHENTICATED"),
    ];
    for (path, credential, want, code) in cases {
        let r = call(get.clone(), path, *credential, None).await.unwrap();
        assert_eq!(status_code(&r), *want, "{path} as {credential:?}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], *code, "{path} as {credential:?}: {body}");
        // the key id at most, never the secret
        let text = body.to_string();
        assert!(!text.contains("-secret") && !text.contains("wrong\""), "{body}");
    }
    // a batch with one forbidden channel is refused whole
    let r = call(
        reqwest::Method::POST,
        "/channels/batch",
        Some(DASH),
        Some(r#"{"channels":["rooms:1","games:1"]}"#),
    )
    .await
    .unwrap();
    assert_eq!(status_code(&r), 403);
    // allowed: the channel, a listing of only the readable channels, the
    // totals for a key that reads everything, a stream inside its scope
    let r = call(get.clone(), "/channels/rooms:1", Some(DASH), None).await.unwrap();
    assert_eq!(status_code(&r), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["channelId"], "rooms:1");
    assert_eq!(body["status"]["occupancy"]["metrics"]["connections"], 1);
    let r = call(get.clone(), "/channels?by=id", Some(DASH), None).await.unwrap();
    assert_eq!(status_code(&r), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!(["rooms:1"])
    );
    let r = call(get.clone(), "/channels?by=id", Some(ADMIN), None).await.unwrap();
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!(["games:1", "rooms:1"])
    );
    let r = call(get.clone(), "/stats", Some(ADMIN), None).await.unwrap();
    assert_eq!(status_code(&r), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["connections"], 2);
    let r = call(get.clone(), "/metrics", Some(ADMIN), None).await.unwrap();
    assert_eq!(status_code(&r), 200);
    let r = call(get.clone(), "/channels/rooms:1/occupancy/stream", Some(DASH), None)
        .await
        .unwrap();
    assert_eq!(status_code(&r), 200);
    drop(r);
    // open: health, the OpenAPI document and the page
    for path in ["/health", "/openapi.json", "/"] {
        let r = call(get.clone(), path, None, None).await.unwrap();
        assert_eq!(status_code(&r), 200, "{path}");
    }
    s.stop().await.unwrap();
}
