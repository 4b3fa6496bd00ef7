//! Access-control test support: a key file of known keys, servers that
//! enforce it, and clients that send one credential with every call.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use occupancy::auth::keys::secret_digest_hex;
use occupancy::auth::Authenticator;
use occupancy::config::Config;
use occupancy::proto::v1 as pb;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;

use crate::support::{Harness, TestServer};

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

/// Seconds since the Unix epoch, as tokens count them.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The test's keys: name → (secret, capabilities as TOML inline table).
pub const KEYS: &[(&str, &str, &str)] = &[
    ("admin", "admin-secret", r#"{ "*" = ["*"] }"#),
    ("fe", "fe-secret", r#"{ "*" = ["report"] }"#),
    ("fe2", "fe2-secret", r#"{ "*" = ["report"] }"#),
    ("dash", "dash-secret", r#"{ "rooms:*" = ["read", "subscribe"] }"#),
];

/// The key file entry of key `id` with `secret` and `caps` (a TOML
/// inline table).
pub fn key_entry(id: &str, secret: &str, caps: &str) -> String {
    format!(
        "[keys.{id}]\nsecret_sha256 = \"{}\"\ncapabilities = {caps}\n\n",
        secret_digest_hex(secret)
    )
}

/// A key file holding [`KEYS`], then `extra`.
pub fn key_file_text(extra: &str) -> String {
    let mut s: String = KEYS
        .iter()
        .map(|(id, secret, caps)| key_entry(id, secret, caps))
        .collect();
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
    TestServer::start(config(h, auth), h.store()).await
}

/// [`server`] with its HTTP side too.
pub async fn http_server(h: &Harness, keys: &KeyFile) -> TestServer {
    TestServer::start_with_http(config(h, authenticator(&keys.path())), h.store()).await
}

fn config(h: &Harness, auth: Arc<Authenticator>) -> Config {
    let mut c = h.config();
    c.auth = Some(auth);
    c
}

/// Credentials of the keys in [`KEYS`].
pub const ADMIN: &str = "admin:admin-secret";
pub const FE: &str = "fe:fe-secret";
pub const FE2: &str = "fe2:fe2-secret";
pub const DASH: &str = "dash:dash-secret";
