//! The key file: API keys (their secrets stored as SHA-256 digests) and
//! the public keys that sign tokens, each with its capabilities.
//!
//! ```toml
//! [keys.frontend-eu]
//! secret_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! capabilities = { "*" = ["report"] }
//!
//! [signers.backend]
//! algorithm = "RS256"                 # or "EdDSA"
//! public_key_file = "backend.pub.pem" # relative to the key file; or public_key = "-----BEGIN…"
//! capabilities = { "rooms:*" = ["read", "subscribe"] }
//! ```
//!
//! Secrets are random strings made by `occupancy key new`; since they are
//! not passwords a fast digest is enough, and it lets the service check a
//! secret with one hash and a constant-time comparison, with no slow
//! password hashing on the path of every call.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::capability::Capabilities;

pub use crate::domain::limits::MAX_KEY_ID_LEN;

/// An API key as loaded: the digest of its secret and what it may do.
pub struct ApiKey {
    /// Its id (the part before `:` of `KEY_ID:SECRET`).
    pub id: Arc<str>,
    digest: [u8; 32],
    /// What it may do.
    pub capabilities: Arc<Capabilities>,
}

impl ApiKey {
    /// Whether `secret` is this key's secret, compared in constant time.
    pub fn check(&self, secret: &str) -> bool {
        bool::from(sha256(secret.as_bytes()).ct_eq(&self.digest))
    }

    /// The HMAC key of this key's HS256 tokens: the secret's SHA-256
    /// digest, which is what the key file holds (see [`token_hmac_key`]).
    pub(crate) fn hmac_key(&self) -> &[u8; 32] {
        &self.digest
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the digest
        f.debug_struct("ApiKey").field("id", &self.id).finish_non_exhaustive()
    }
}

/// A public key that signs tokens (RS256 or EdDSA), and the most its
/// tokens may allow.
pub struct Signer {
    /// Its id (the `kid` of its tokens' header).
    pub id: Arc<str>,
    /// Its algorithm.
    pub algorithm: Algorithm,
    pub(crate) key: DecodingKey,
    /// The most its tokens may allow.
    pub capabilities: Arc<Capabilities>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("id", &self.id)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Everything a key file holds, parsed and checked.
#[derive(Debug, Default)]
pub struct KeySet {
    pub(crate) keys: HashMap<Arc<str>, ApiKey>,
    pub(crate) signers: HashMap<Arc<str>, Signer>,
}

impl KeySet {
    /// Whether no credential is configured at all.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.signers.is_empty()
    }

    /// Number of API keys and of token signers.
    pub fn counts(&self) -> (usize, usize) {
        (self.keys.len(), self.signers.len())
    }

    /// Parses a key file's text; `public_key_file` paths are relative to
    /// `dir`.
    ///
    /// # Errors
    /// A message naming the key and field at fault.
    pub fn parse(text: &str, dir: &Path) -> Result<Self, String> {
        let file: FileFormat = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut set = KeySet::default();
        for (id, k) in file.keys {
            check_id(&id)?;
            let digest = parse_digest(&k.secret_sha256).map_err(|e| format!("keys.{id}.secret_sha256: {e}"))?;
            let capabilities =
                Capabilities::parse(&k.capabilities).map_err(|e| format!("keys.{id}.capabilities: {e}"))?;
            let id: Arc<str> = id.into();
            set.keys.insert(
                id.clone(),
                ApiKey {
                    id,
                    digest,
                    capabilities: Arc::new(capabilities),
                },
            );
        }
        for (id, s) in file.signers {
            check_id(&id)?;
            if set.keys.contains_key(id.as_str()) {
                return Err(format!(
                    "signers.{id}: the id is also an API key's; ids must be unique across keys and signers"
                ));
            }
            let pem = match (s.public_key, s.public_key_file) {
                (Some(pem), None) => pem.into_bytes(),
                (None, Some(file)) => {
                    let path = dir.join(&file);
                    std::fs::read(&path)
                        .map_err(|e| format!("signers.{id}.public_key_file: cannot read {}: {e}", path.display()))?
                }
                _ => {
                    return Err(format!(
                        "signers.{id}: give exactly one of public_key and public_key_file"
                    ))
                }
            };
            let (algorithm, key) = match s.algorithm.as_str() {
                "RS256" => (Algorithm::RS256, DecodingKey::from_rsa_pem(&pem)),
                "EdDSA" => (Algorithm::EdDSA, DecodingKey::from_ed_pem(&pem)),
                other => {
                    return Err(format!(
                        "signers.{id}.algorithm: {other:?} is not supported (RS256 or EdDSA; HS256 tokens are signed with an API key)"
                    ))
                }
            };
            let key = key.map_err(|e| format!("signers.{id}: not a {} public key in PEM: {e}", s.algorithm))?;
            let capabilities =
                Capabilities::parse(&s.capabilities).map_err(|e| format!("signers.{id}.capabilities: {e}"))?;
            let id: Arc<str> = id.into();
            set.signers.insert(
                id.clone(),
                Signer {
                    id,
                    algorithm,
                    key,
                    capabilities: Arc::new(capabilities),
                },
            );
        }
        Ok(set)
    }

    /// Reads and parses a key file; also returns the SHA-256 digest of its
    /// text, to tell later whether it changed.
    ///
    /// # Errors
    /// A message naming the file and what is wrong with it.
    pub fn load(path: &Path) -> Result<(Self, [u8; 32]), String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        let set = Self::parse(&text, dir).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok((set, sha256(text.as_bytes())))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    keys: BTreeMap<String, KeyEntry>,
    #[serde(default)]
    signers: BTreeMap<String, SignerEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    secret_sha256: String,
    #[serde(default)]
    capabilities: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignerEntry {
    algorithm: String,
    public_key: Option<String>,
    public_key_file: Option<String>,
    #[serde(default)]
    capabilities: BTreeMap<String, Vec<String>>,
}

/// Checks a key id: 1 to 64 bytes of ASCII letters, digits, `.`, `_`, `-`
/// (so it can never hold the `:` that ends it in a credential).
///
/// # Errors
/// A message naming the id.
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_KEY_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "key id {id:?}: must be 1 to {MAX_KEY_ID_LEN} ASCII letters, digits, '.', '_' or '-'"
        ))
    }
}

fn parse_digest(hex: &str) -> Result<[u8; 32], String> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return Err(format!(
            "must be 64 hex digits (a SHA-256 digest), got {} characters",
            bytes.len()
        ));
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).map_err(|_| "must be hex digits".to_string())?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| "must be hex digits".to_string())?;
    }
    Ok(out)
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The lowercase hex SHA-256 digest of a secret, as the key file holds it.
pub fn secret_digest_hex(secret: &str) -> String {
    sha256(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The HMAC key that signs a key's HS256 tokens: the SHA-256 digest of its
/// secret (32 bytes). The service verifies tokens with the digest the key
/// file holds, so the file never needs the secret itself.
pub fn token_hmac_key(secret: &str) -> [u8; 32] {
    sha256(secret.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(body: &str) -> Result<KeySet, String> {
        KeySet::parse(body, Path::new("."))
    }

    #[test]
    fn keys_parse_and_check_secrets_by_digest() {
        let set = file(&format!(
            "[keys.fe]\nsecret_sha256 = \"{}\"\ncapabilities = {{ \"*\" = [\"report\"] }}\n",
            secret_digest_hex("s3cret")
        ))
        .unwrap();
        let k = &set.keys["fe"];
        assert!(k.check("s3cret"));
        assert!(!k.check("s3cres"));
        assert!(!k.check(""));
        assert!(k.capabilities.may(super::super::Op::Report, "x"));
        assert!(!format!("{k:?}").contains(&secret_digest_hex("s3cret")));
        assert_eq!(set.counts(), (1, 0));
    }

    #[test]
    fn bad_files_are_refused_naming_the_field() {
        let e = file("[keys.fe]\nsecret_sha256 = \"abc\"\n").unwrap_err();
        assert!(e.contains("keys.fe.secret_sha256"), "{e}");
        let e = file("[keys.\"a:b\"]\nsecret_sha256 = \"00\"\n").unwrap_err();
        assert!(e.contains("a:b"), "{e}");
        let d = secret_digest_hex("x");
        let e = file(&format!(
            "[keys.fe]\nsecret_sha256 = \"{d}\"\ncapabilities = {{ \"*\" = [\"write\"] }}\n"
        ))
        .unwrap_err();
        assert!(e.contains("keys.fe.capabilities") && e.contains("write"), "{e}");
        let e = file("[keys.fe]\nsecret = \"x\"\n").unwrap_err();
        assert!(e.contains("secret"), "{e}");
        let e = file("[signers.b]\nalgorithm = \"HS256\"\npublic_key = \"x\"\n").unwrap_err();
        assert!(e.contains("signers.b.algorithm"), "{e}");
        let e = file("[signers.b]\nalgorithm = \"RS256\"\npublic_key = \"not pem\"\n").unwrap_err();
        assert!(e.contains("signers.b"), "{e}");
        let e = file("[signers.b]\nalgorithm = \"RS256\"\n").unwrap_err();
        assert!(e.contains("exactly one"), "{e}");
        let e = file("[signers.b]\nalgorithm = \"RS256\"\npublic_key_file = \"/nonexistent.pem\"\n").unwrap_err();
        assert!(e.contains("public_key_file"), "{e}");
        assert!(file("").unwrap().is_empty());
        assert!(file("not toml [").is_err());
    }
}
