//! Access control, free of any transport: who a credential is
//! ([`Authenticator::authenticate`] → [`Principal`]) and what it may do
//! ([`Principal::check`], [`Principal::may`]). The gRPC layer
//! (`api::auth`) and any other listener use the same API.
//!
//! Credentials travel as `authorization: Bearer …`:
//! - an API key, `KEY_ID:SECRET`, checked against the SHA-256 digest in the
//!   key file in constant time;
//! - a signed token (JWT) whose header's `kid` names the key that signed
//!   it: an API key (HS256, with the digest of its secret as HMAC key) or a
//!   configured public key (RS256, EdDSA). Its claims are `exp` (required)
//!   and `cap`, capabilities in the key file's shape; a token only narrows
//!   its key: it may do what both allow.
//!
//! The key id (or, for a token, its signer's id) is the principal's
//! identity: it owns the sessions it opens.

pub mod capability;
pub mod commands;
pub mod keys;
pub mod reload;
pub mod token;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

pub use capability::{Capabilities, Op};
pub use keys::KeySet;

/// Why a call was refused; `crate::error` maps these to gRPC codes (the
/// `Unauthenticated` kinds to UNAUTHENTICATED, the others to
/// PERMISSION_DENIED).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential was sent.
    #[error("missing credential: send `authorization: Bearer KEY_ID:SECRET` or `Bearer TOKEN`")]
    Missing,
    /// The credential is not a key or a token.
    #[error("malformed credential: {0}")]
    Malformed(String),
    /// No such key (or token signer).
    #[error("unknown key {0:?}")]
    UnknownKey(String),
    /// The key exists but the secret is wrong.
    #[error("wrong secret for key {0:?}")]
    WrongSecret(String),
    /// The token's `exp` has passed.
    #[error("token of key {0:?} expired")]
    Expired(String),
    /// The token's signature, algorithm or claims are wrong.
    #[error("invalid token of key {key:?}: {reason}")]
    InvalidToken {
        /// The key it names.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The credential may not do `op` on `channel`.
    #[error("key {key:?} may not {op} channel {channel:?}")]
    Denied {
        /// The key.
        key: String,
        /// The operation.
        op: Op,
        /// The channel.
        channel: String,
    },
    /// The credential may not do `op` on every channel under `prefix`.
    #[error("key {key:?} may not {op} every channel under prefix {prefix:?}")]
    DeniedPrefix {
        /// The key.
        key: String,
        /// The operation.
        op: Op,
        /// The prefix.
        prefix: String,
    },
    /// The credential may not do `op` at all.
    #[error("key {key:?} may not {op}")]
    NoCapability {
        /// The key.
        key: String,
        /// The operation.
        op: Op,
    },
    /// The session or connection belongs to another key.
    #[error("key {key:?} does not own {what}")]
    NotOwner {
        /// The key.
        key: String,
        /// What it tried to use (`session "fe-1"`).
        what: String,
    },
}

impl AuthError {
    /// Whether the caller is unknown (UNAUTHENTICATED) rather than known
    /// but refused (PERMISSION_DENIED).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            AuthError::Missing
                | AuthError::Malformed(_)
                | AuthError::UnknownKey(_)
                | AuthError::WrongSecret(_)
                | AuthError::Expired(_)
                | AuthError::InvalidToken { .. }
        )
    }

    /// The key id it concerns, for logs (never a secret).
    pub fn key(&self) -> &str {
        match self {
            AuthError::Missing | AuthError::Malformed(_) => "",
            AuthError::UnknownKey(k) | AuthError::WrongSecret(k) | AuthError::Expired(k) => k,
            AuthError::InvalidToken { key, .. }
            | AuthError::Denied { key, .. }
            | AuthError::DeniedPrefix { key, .. }
            | AuthError::NoCapability { key, .. }
            | AuthError::NotOwner { key, .. } => key,
        }
    }
}

/// Counts of refused calls, for logs and tests.
#[derive(Debug, Default)]
pub struct AuthCounters {
    /// Calls whose credential did not authenticate.
    pub failures: AtomicU64,
    /// Authenticated calls refused for their scope or ownership.
    pub denials: AtomicU64,
    /// Key file reloads taken.
    pub reloads: AtomicU64,
    /// Key file reloads refused (the previous keys stayed).
    pub reload_failures: AtomicU64,
}

/// Who is calling, and what they may do.
#[derive(Debug, Clone)]
pub struct Principal {
    key: Option<Arc<str>>,
    caps: Option<Arc<Capabilities>>,
    token: Option<Arc<Capabilities>>,
    expires_at: Option<u64>,
    counters: Option<Arc<AuthCounters>>,
}

impl Principal {
    /// The caller of a service with access control off: may do anything,
    /// owns nothing (sessions stay unowned, as before access control).
    pub fn anonymous() -> Self {
        Self {
            key: None,
            caps: None,
            token: None,
            expires_at: None,
            counters: None,
        }
    }

    /// The id of the key it authenticated as (the signer's for a token);
    /// `None` when access control is off.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The owner recorded with the sessions it opens: its key id, or the
    /// empty string when access control is off.
    pub fn owner(&self) -> &str {
        self.key.as_deref().unwrap_or("")
    }

    /// When its token expires (Unix seconds); `None` for keys.
    pub fn expires_at(&self) -> Option<u64> {
        self.expires_at
    }

    /// Whether it may do `op` on `channel`.
    pub fn may(&self, op: Op, channel: &str) -> bool {
        self.caps.as_ref().is_none_or(|c| c.may(op, channel)) && self.token.as_ref().is_none_or(|c| c.may(op, channel))
    }

    /// Whether it may do `op` on every channel under `prefix`.
    pub fn covers(&self, op: Op, prefix: &str) -> bool {
        self.caps.as_ref().is_none_or(|c| c.covers(op, prefix))
            && self.token.as_ref().is_none_or(|c| c.covers(op, prefix))
    }

    /// Whether it may do `op` on some channel under `prefix` (a listing
    /// under it can find anything).
    pub fn meets(&self, op: Op, prefix: &str) -> bool {
        self.caps.as_ref().is_none_or(|c| c.meets(op, prefix))
            && self.token.as_ref().is_none_or(|c| c.meets(op, prefix))
    }

    /// [`Principal::may`] as a result.
    ///
    /// # Errors
    /// [`AuthError::Denied`] naming the channel.
    pub fn check(&self, op: Op, channel: &str) -> Result<(), AuthError> {
        if self.may(op, channel) {
            return Ok(());
        }
        Err(self.denied(AuthError::Denied {
            key: self.owner().to_string(),
            op,
            channel: channel.to_string(),
        }))
    }

    /// [`Principal::covers`] as a result.
    ///
    /// # Errors
    /// [`AuthError::DeniedPrefix`] naming the prefix.
    pub fn check_prefix(&self, op: Op, prefix: &str) -> Result<(), AuthError> {
        if self.covers(op, prefix) {
            return Ok(());
        }
        Err(self.denied(AuthError::DeniedPrefix {
            key: self.owner().to_string(),
            op,
            prefix: prefix.to_string(),
        }))
    }

    /// Checks that it may do `op` on at least some channel.
    ///
    /// # Errors
    /// [`AuthError::NoCapability`].
    pub fn check_any(&self, op: Op) -> Result<(), AuthError> {
        let has = self.caps.as_ref().is_none_or(|c| c.has(op)) && self.token.as_ref().is_none_or(|c| c.has(op));
        if has {
            return Ok(());
        }
        Err(self.denied(AuthError::NoCapability {
            key: self.owner().to_string(),
            op,
        }))
    }

    /// Counts and logs a refusal of this principal and returns it.
    pub fn denied(&self, err: AuthError) -> AuthError {
        if let Some(c) = &self.counters {
            c.denials.fetch_add(1, Ordering::Relaxed);
        }
        tracing::warn!(key = self.owner(), reason = %err, "call denied");
        err
    }
}

/// Turns credentials into principals, with the current keys (replaced
/// whole on reload, so a call sees one consistent key set).
#[derive(Debug)]
pub struct Authenticator {
    keys: Option<RwLock<Arc<KeySet>>>,
    path: Option<PathBuf>,
    /// SHA-256 of the key file text the keys in force came from.
    loaded: RwLock<Option<[u8; 32]>>,
    counters: Arc<AuthCounters>,
}

impl Authenticator {
    /// Access control off: every caller is [`Principal::anonymous`].
    pub fn open() -> Self {
        Self {
            keys: None,
            path: None,
            loaded: RwLock::new(None),
            counters: Arc::default(),
        }
    }

    /// Access control on, with `keys` (loaded from `path`, when given, for
    /// reloads).
    pub fn new(keys: KeySet, path: Option<PathBuf>) -> Self {
        Self {
            keys: Some(RwLock::new(Arc::new(keys))),
            path,
            loaded: RwLock::new(None),
            counters: Arc::default(),
        }
    }

    /// Access control on, with the keys of the file at `path`.
    ///
    /// # Errors
    /// A message naming the file and what is wrong with it.
    pub fn from_file(path: PathBuf) -> Result<Self, String> {
        let (keys, digest) = KeySet::load(&path)?;
        let auth = Self::new(keys, Some(path));
        auth.set_loaded(digest);
        Ok(auth)
    }

    /// The digest of the key file text the keys in force came from.
    pub fn loaded(&self) -> Option<[u8; 32]> {
        *crate::sync::read(&self.loaded)
    }

    pub(crate) fn set_loaded(&self, digest: [u8; 32]) {
        *crate::sync::write(&self.loaded) = Some(digest);
    }

    /// Whether calls need a credential.
    pub fn enabled(&self) -> bool {
        self.keys.is_some()
    }

    /// The key file, if keys came from one.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    /// Counts of refused calls.
    pub fn counters(&self) -> &AuthCounters {
        &self.counters
    }

    /// Replaces the keys (calls in flight keep the set they started with).
    pub fn replace(&self, keys: KeySet) {
        if let Some(lock) = &self.keys {
            *crate::sync::write(lock) = Arc::new(keys);
        }
    }

    fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.as_ref().map(|l| crate::sync::read(l).clone())
    }

    /// Authenticates the value of an `authorization` header (`None` when
    /// absent).
    ///
    /// # Errors
    /// An [`AuthError`] for which [`AuthError::is_unauthenticated`] holds.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        let Some(keys) = self.current() else {
            return Ok(Principal::anonymous());
        };
        let result = self.authenticate_with(&keys, header);
        if let Err(e) = &result {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(key = e.key(), reason = %e, "authentication failed");
        }
        result
    }

    fn authenticate_with(&self, keys: &KeySet, header: Option<&str>) -> Result<Principal, AuthError> {
        let header = header
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .ok_or(AuthError::Missing)?;
        let credential = match header.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => {
                return Err(AuthError::Malformed(
                    "expected `Bearer KEY_ID:SECRET` or `Bearer TOKEN`".into(),
                ))
            }
        };
        if let Some((id, secret)) = credential.split_once(':') {
            let key = keys.keys.get(id).ok_or_else(|| AuthError::UnknownKey(id.to_string()))?;
            if !key.check(secret) {
                return Err(AuthError::WrongSecret(id.to_string()));
            }
            return Ok(Principal {
                key: Some(key.id.clone()),
                caps: Some(key.capabilities.clone()),
                token: None,
                expires_at: None,
                counters: Some(self.counters.clone()),
            });
        }
        let verified = token::verify(keys, credential)?;
        Ok(Principal {
            key: Some(verified.key),
            caps: Some(verified.key_capabilities),
            token: Some(Arc::new(verified.capabilities)),
            expires_at: Some(verified.expires_at),
            counters: Some(self.counters.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn authn() -> Authenticator {
        let text = format!(
            "[keys.fe]\nsecret_sha256 = \"{}\"\ncapabilities = {{ \"*\" = [\"report\"] }}\n\
             [keys.dash]\nsecret_sha256 = \"{}\"\ncapabilities = {{ \"rooms:*\" = [\"read\", \"subscribe\"] }}\n",
            keys::secret_digest_hex("fe-secret"),
            keys::secret_digest_hex("dash-secret"),
        );
        Authenticator::new(KeySet::parse(&text, Path::new(".")).unwrap(), None)
    }

    #[test]
    fn keys_authenticate_and_are_scoped() {
        let a = authn();
        let p = a.authenticate(Some("Bearer dash:dash-secret")).unwrap();
        assert_eq!(p.key(), Some("dash"));
        assert!(p.may(Op::Read, "rooms:1"));
        assert!(!p.may(Op::Read, "games:1"));
        assert!(!p.may(Op::Report, "rooms:1"));
        let e = p.check(Op::Read, "games:1").unwrap_err();
        assert!(!e.is_unauthenticated());
        assert!(e.to_string().contains("games:1"), "{e}");
        assert!(p.check_prefix(Op::Subscribe, "rooms:eu:").is_ok());
        assert!(p.check_prefix(Op::Subscribe, "").is_err());
        assert!(p.check_any(Op::Report).is_err());
        assert_eq!(a.counters().denials.load(Ordering::Relaxed), 3);
        // lowercase scheme too
        assert!(a.authenticate(Some("bearer fe:fe-secret")).is_ok());
    }

    #[test]
    fn bad_credentials_are_unauthenticated() {
        let a = authn();
        for (header, want) in [
            (None, AuthError::Missing),
            (Some(""), AuthError::Missing),
            (Some("Bearer nobody:x"), AuthError::UnknownKey("nobody".into())),
            (Some("Bearer fe:wrong"), AuthError::WrongSecret("fe".into())),
            (Some("Bearer fe:"), AuthError::WrongSecret("fe".into())),
        ] {
            let e = a.authenticate(header).unwrap_err();
            assert_eq!(e, want, "{header:?}");
            assert!(e.is_unauthenticated());
            assert!(!e.to_string().contains("fe-secret"));
        }
        let e = a.authenticate(Some("Basic abc")).unwrap_err();
        assert!(matches!(e, AuthError::Malformed(_)), "{e:?}");
        let e = a.authenticate(Some("Bearer not-a-token")).unwrap_err();
        assert!(e.is_unauthenticated(), "{e:?}");
        assert_eq!(a.counters().failures.load(Ordering::Relaxed), 7);
    }

    #[test]
    fn open_mode_lets_everyone_in_and_owns_nothing() {
        let a = Authenticator::open();
        let p = a.authenticate(None).unwrap();
        assert!(!a.enabled());
        assert_eq!(p.owner(), "");
        assert!(p.covers(Op::Admin, ""));
    }

    #[test]
    fn a_replaced_key_set_applies_to_the_next_call() {
        let a = authn();
        assert!(a.authenticate(Some("Bearer fe:fe-secret")).is_ok());
        a.replace(KeySet::default());
        assert_eq!(
            a.authenticate(Some("Bearer fe:fe-secret")).unwrap_err(),
            AuthError::UnknownKey("fe".into())
        );
    }
}
