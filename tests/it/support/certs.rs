//! Certificates made in the test with rcgen: a CA that signs, and a
//! localhost certificate written where a server reads it.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A CA that signs certificates.
pub struct Ca {
    /// Its certificate, PEM.
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` and its key, PEM.
    pub fn sign(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A new CA (`ca.pem`) and a certificate for localhost and 127.0.0.1
/// signed by it (`cert_file`, `key_file`), written to `dir`.
pub fn localhost_certificates(dir: &Path, cert_file: &str, key_file: &str) {
    let ca = Ca::new("test CA");
    let (cert, key) = ca.sign(&["localhost", "127.0.0.1"]);
    std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
    std::fs::write(dir.join(cert_file), cert).unwrap();
    std::fs::write(dir.join(key_file), key).unwrap();
}
