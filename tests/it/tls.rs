//! Server TLS (certificates made in the test with rcgen): a TLS client
//! works, a plaintext client and one trusting another CA fail, mTLS wants
//! a client certificate, and a replaced certificate is served to new
//! connections without a restart. And a Redis ACL user in the URL.

use std::path::{Path, PathBuf};
use std::time::Duration;

use occupancy::proto::v1 as pb;
use occupancy::tls::TlsConfig;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::support::certs::Ca;
use crate::support::{eventually, Harness, TestServer};

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// Writes a file atomically.
    fn put(&self, name: &str, text: &str) -> PathBuf {
        let tmp = self.path(&format!("{name}.new"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.path(name)).unwrap();
        self.path(name)
    }
}

/// Files holding a certificate for localhost signed by `ca`, and its key
/// (`cert.pem`, `key.pem`).
fn serving(ca: &Ca) -> Files {
    let files = Files::new();
    let (cert, key) = ca.sign(&["localhost"]);
    files.put("cert.pem", &cert);
    files.put("key.pem", &key);
    files
}

async fn tls_server(files: &Files, client_ca: Option<&Path>) -> TestServer {
    let h = Harness::memory(Duration::from_secs(30));
    let mut c = h.config();
    c.tls = Some(TlsConfig {
        cert: files.path("cert.pem"),
        key: files.path("key.pem"),
        client_ca: client_ca.map(Path::to_path_buf),
    });
    TestServer::start(c, h.store()).await
}

async fn connect(s: &TestServer, ca: &str, identity: Option<Identity>) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(id);
    }
    Channel::from_shared(format!("https://{}", s.addr))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
}

async fn get(ch: Channel) -> Result<(), tonic::Status> {
    pb::occupancy_service_client::OccupancyServiceClient::new(ch)
        .get_occupancy(pb::GetOccupancyRequest {
            channel: "rooms:1".into(),
        })
        .await
        .map(drop)
}

/// The whole error chain, for assertions on the cause.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_connect_and_others_fail_clearly() {
    let ca = Ca::new("test ca");
    let files = serving(&ca);
    let s = tls_server(&files, None).await;
    get(connect(&s, &ca.pem, None).await.expect("TLS connect"))
        .await
        .expect("a call over TLS");
    // plaintext: refused
    let plain = s.channel_result().await;
    let failed = match plain {
        Err(_) => true,
        Ok(ch) => get(ch).await.is_err(),
    };
    assert!(failed, "a plaintext client must not get through");
    // a client trusting another CA: the handshake fails naming the cause
    let other = Ca::new("other ca");
    let e = connect(&s, &other.pem, None).await.expect_err("wrong CA");
    let text = chain(&e);
    assert!(
        text.to_lowercase().contains("certificate") || text.contains("UnknownIssuer"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_needs_a_client_certificate_from_the_ca() {
    let ca = Ca::new("server ca");
    let clients = Ca::new("client ca");
    let files = serving(&ca);
    let client_ca = files.put("clients.pem", &clients.pem);
    let s = tls_server(&files, Some(&client_ca)).await;
    // without a client certificate: refused (at the handshake or the call)
    let refused = match connect(&s, &ca.pem, None).await {
        Err(_) => true,
        Ok(ch) => get(ch).await.is_err(),
    };
    assert!(refused, "mTLS must refuse a client without a certificate");
    // a certificate of another CA: refused too
    let (c, k) = ca.sign(&["client"]);
    let refused = match connect(&s, &ca.pem, Some(Identity::from_pem(c, k))).await {
        Err(_) => true,
        Ok(ch) => get(ch).await.is_err(),
    };
    assert!(refused, "a client certificate of another CA must be refused");
    let (c, k) = clients.sign(&["client"]);
    let ch = connect(&s, &ca.pem, Some(Identity::from_pem(c, k)))
        .await
        .expect("mTLS connect");
    get(ch).await.expect("a call with a client certificate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_served_to_new_connections() {
    let first = Ca::new("first ca");
    let files = serving(&first);
    let s = tls_server(&files, None).await;
    let old = connect(&s, &first.pem, None).await.expect("connect");
    get(old.clone()).await.unwrap();
    let second = Ca::new("second ca");
    let (cert, key) = second.sign(&["localhost"]);
    // key first, then certificate: in between they do not match and the
    // old pair stays in use
    files.put("key.pem", &key);
    files.put("cert.pem", &cert);
    let pem = second.pem.clone();
    eventually(Duration::from_secs(15), "the new certificate is served", || {
        let pem = pem.clone();
        let s = &s;
        async move {
            match connect(s, &pem, None).await {
                Ok(ch) => get(ch).await.ok(),
                Err(_) => None,
            }
        }
    })
    .await;
    // the connection made before keeps working
    get(old).await.expect("an open connection keeps its session");
    // and new connections no longer get the old certificate
    assert!(connect(&s, &first.pem, None).await.is_err());
}

/// A Redis ACL user and password in the URL: the service works as that
/// user; a wrong password makes calls UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_acl_user_in_the_url() {
    let h = Harness::redis(Duration::from_secs(30));
    let redis = h.redis_server();
    let _: () = ::redis::cmd("ACL")
        .arg(vec!["SETUSER", "occ", "on", ">s3cret-pw", "~*", "&*", "+@all"])
        .query(&mut redis.connection())
        .unwrap();
    // the default user may no longer do anything: only occ can
    let _: () = ::redis::cmd("ACL")
        .arg(vec!["SETUSER", "default", "off"])
        .query(&mut redis.connection_as("occ", "s3cret-pw"))
        .unwrap();
    let port = redis
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    for (url, works) in [
        (format!("redis://occ:s3cret-pw@127.0.0.1:{port}/"), true),
        (format!("redis://occ:wrong@127.0.0.1:{port}/"), false),
    ] {
        let mut cfg = h.redis_config().unwrap();
        cfg.url = url.clone();
        cfg.timeout = Duration::from_millis(500);
        let mut c = occupancy::config::Config::redis(cfg.clone());
        c.reap_interval = Duration::from_millis(50);
        let store = std::sync::Arc::new(occupancy::store::RedisStore::new(cfg).unwrap());
        let s = TestServer::start(c, store).await;
        let mut w = s.write().await;
        let r = w
            .attach(pb::AttachRequest {
                session_id: "fe".into(),
                connection_id: "c".into(),
                channel: "rooms:1".into(),
                modes: crate::support::modes(&[pb::Mode::Subscribe]),
            })
            .await;
        if works {
            assert_eq!(r.unwrap().into_inner().metrics.unwrap().connections, 1, "{url}");
        } else {
            assert_eq!(r.unwrap_err().code(), tonic::Code::Unavailable, "{url}");
        }
    }
}
