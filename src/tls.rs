//! Server TLS with rustls: the certificate and key come from PEM files and
//! are reloaded when they change (new connections get the new
//! certificate, open ones keep theirs); with a client CA file, clients
//! must present a certificate it signed (mTLS).
//!
//! Handshakes run on their own tasks, so a slow or stalled client never
//! holds up the accept loop; accepted streams go to the gRPC server.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::crypto::ring as provider;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// TLS file locations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates, PEM, that client certificates must chain to; unset:
    /// no client certificates asked for.
    pub client_ca: Option<PathBuf>,
}

/// How often the certificate files are looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads a certificate chain and key into a key rustls can serve.
///
/// # Errors
/// A message naming the file at fault.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("--tls-cert {}: no certificate in the file", cert.display()));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let signer = provider::sign::any_supported_type(&der).map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match().map_err(|e| {
        format!(
            "--tls-key {} does not belong to --tls-cert {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(ck)
}

/// Serves the current certificate; replaced whole on reload.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(crate::sync::read(&self.0).clone())
    }
}

/// A TLS acceptor whose certificate follows its files.
#[derive(Clone)]
pub struct ReloadingAcceptor {
    acceptor: TlsAcceptor,
    current: Arc<Current>,
    config: TlsConfig,
}

impl ReloadingAcceptor {
    /// Loads the files once.
    ///
    /// # Errors
    /// A message naming the file at fault.
    pub fn new(config: &TlsConfig) -> Result<Self, String> {
        let current = Arc::new(Current(RwLock::new(Arc::new(load_certified_key(
            &config.cert,
            &config.key,
        )?))));
        let provider = Arc::new(provider::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?;
        let mut server = match &config.client_ca {
            None => builder.with_no_client_auth().with_cert_resolver(current.clone()),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                let certs =
                    CertificateDer::pem_file_iter(ca).map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
                for c in certs {
                    let c = c.map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
                    roots
                        .add(c)
                        .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("--tls-client-ca {}: no certificate in the file", ca.display()));
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
                builder
                    .with_client_cert_verifier(verifier)
                    .with_cert_resolver(current.clone())
            }
        };
        // gRPC is HTTP/2 only
        server.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            current,
            config: config.clone(),
        })
    }

    /// Loads the certificate files again; on failure the certificate in
    /// use stays. Returns whether the new one was taken.
    pub fn reload(&self) -> bool {
        match load_certified_key(&self.config.cert, &self.config.key) {
            Ok(ck) => {
                *crate::sync::write(&self.current.0) = Arc::new(ck);
                info!(cert = %self.config.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                warn!(cause = %e, "TLS certificate not reloaded; the previous one stays in use");
                false
            }
        }
    }

    /// Reloads the certificate whenever its files change, until `cancel`.
    pub async fn watch(self, cancel: CancellationToken) {
        let look = |c: &TlsConfig| {
            let m = |p: &Path| std::fs::read(p).ok().map(|b| crate::auth::keys::sha256(&b));
            (m(&c.cert), m(&c.key))
        };
        let mut seen = look(&self.config);
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {
                    let now = look(&self.config);
                    if now != seen && now.0.is_some() && now.1.is_some() {
                        // a certificate and key written one after the other
                        // do not match in between: keep trying until they do
                        if self.reload() {
                            seen = now;
                        }
                    }
                }
            }
        }
    }

    /// Accepts TCP connections on `listener` and hands each completed
    /// handshake to the returned stream, until `cancel`.
    pub fn incoming(
        &self,
        listener: TcpListener,
        cancel: CancellationToken,
    ) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = self.acceptor.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = cancel.cancelled() => return,
                    a = listener.accept() => a,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // out of file descriptors and the like: wait a little
                        warn!(cause = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => debug!(%peer, cause = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}
