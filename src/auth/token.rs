//! Signed tokens (JWT): short-lived, narrower credentials a backend hands
//! to a dashboard or a browser.
//!
//! Header: `alg` (HS256, RS256 or EdDSA) and `kid`, the id of the API key
//! or signer whose key signed it. Claims: `exp` (Unix seconds, required),
//! `cap` (capabilities, `{"rooms:*": ["read", "subscribe"]}`; absent: the
//! key's own). A token may do what both its claims and its key allow, so
//! it can only narrow the key. Expiry is checked without leeway: keep
//! clocks in sync.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::capability::Capabilities;
use super::keys::{self, KeySet};
use super::AuthError;

/// A token's claims.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issue time, Unix seconds (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Capabilities, in the key file's shape; absent: the key's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap: Option<BTreeMap<String, Vec<String>>>,
}

/// A token that verified.
#[derive(Debug)]
pub struct Verified {
    /// The key (or signer) that signed it.
    pub key: Arc<str>,
    /// That key's capabilities.
    pub key_capabilities: Arc<Capabilities>,
    /// The token's own capabilities.
    pub capabilities: Capabilities,
    /// Its expiry, Unix seconds.
    pub expires_at: u64,
}

/// Verifies `token` against `keys`.
///
/// # Errors
/// [`AuthError::Malformed`] for something that is not a JWT,
/// [`AuthError::UnknownKey`] for a `kid` no key or signer has,
/// [`AuthError::Expired`] for a valid token past its `exp`, and
/// [`AuthError::InvalidToken`] for anything else wrong.
pub fn verify(keys: &KeySet, token: &str) -> Result<Verified, AuthError> {
    let header = jsonwebtoken::decode_header(token)
        .map_err(|e| AuthError::Malformed(format!("not `KEY_ID:SECRET` nor a signed token ({e})")))?;
    let kid = header
        .kid
        .ok_or_else(|| AuthError::Malformed("the token's header has no `kid` naming its key".into()))?;
    let invalid = |reason: String| AuthError::InvalidToken {
        key: kid.clone(),
        reason,
    };
    let (id, algorithm, decoding, key_caps) = if let Some(k) = keys.keys.get(kid.as_str()) {
        let dk = DecodingKey::from_secret(k.hmac_key()).map_err(|e| invalid(e.to_string()))?;
        (k.id.clone(), Algorithm::HS256, dk, k.capabilities.clone())
    } else if let Some(s) = keys.signers.get(kid.as_str()) {
        (s.id.clone(), s.algorithm, s.key.clone(), s.capabilities.clone())
    } else {
        return Err(AuthError::UnknownKey(kid));
    };
    if header.alg != algorithm {
        return Err(invalid(format!(
            "signed with {:?}, but key {kid:?} signs with {algorithm:?}",
            header.alg
        )));
    }
    let mut validation = Validation::new(algorithm);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp"]);
    let data = jsonwebtoken::decode::<Claims>(token, &decoding, &validation).map_err(|e| match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired(kid.clone()),
        ErrorKind::InvalidSignature => invalid("bad signature".into()),
        _ => invalid(e.to_string()),
    })?;
    let capabilities = match &data.claims.cap {
        Some(cap) => Capabilities::parse(cap).map_err(|e| invalid(format!("cap: {e}")))?,
        None => (*key_caps).clone(),
    };
    Ok(Verified {
        key: id,
        key_capabilities: key_caps,
        capabilities,
        expires_at: data.claims.exp,
    })
}

/// Makes an HS256 token of API key `key_id` (with its `secret`), valid for
/// `ttl`, with capabilities `cap` (`None`: the key's own). This is what
/// `occupancy token` prints; any JWT library does the same with the
/// secret's SHA-256 digest as HMAC key.
///
/// # Errors
/// A message when the id, the capabilities or the signing are refused.
pub fn mint(
    key_id: &str,
    secret: &str,
    cap: Option<BTreeMap<String, Vec<String>>>,
    ttl: Duration,
) -> Result<String, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    mint_until(key_id, secret, cap, now + ttl.as_secs().max(1))
}

/// [`mint`] with the expiry given as Unix seconds.
///
/// # Errors
/// As [`mint`].
pub fn mint_until(
    key_id: &str,
    secret: &str,
    cap: Option<BTreeMap<String, Vec<String>>>,
    exp: u64,
) -> Result<String, String> {
    keys::check_id(key_id)?;
    if let Some(c) = &cap {
        Capabilities::parse(c)?;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = Claims {
        exp,
        iat: Some(now),
        cap,
    };
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key_id.to_string());
    let key =
        EncodingKey::from_secret(&keys::token_hmac_key(secret)).map_err(|e| format!("cannot sign the token: {e}"))?;
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| format!("cannot sign the token: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Authenticator, Op};
    use std::path::Path;

    fn cap(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(p, ops)| (p.to_string(), ops.iter().map(|o| o.to_string()).collect()))
            .collect()
    }

    fn authn(extra: &str) -> Authenticator {
        let text = format!(
            "[keys.backend]\nsecret_sha256 = \"{}\"\ncapabilities = {{ \"rooms:*\" = [\"read\", \"subscribe\"] }}\n{extra}",
            keys::secret_digest_hex("backend-secret"),
        );
        Authenticator::new(KeySet::parse(&text, Path::new(".")).unwrap(), None)
    }

    fn signed(claims: &Claims, kid: &str, key: &EncodingKey, alg: Algorithm) -> String {
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, claims, key).unwrap()
    }

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn hs256_tokens_narrow_their_key() {
        let a = authn("");
        let t = mint(
            "backend",
            "backend-secret",
            Some(cap(&[("rooms:a*", &["read", "report"])])),
            Duration::from_secs(60),
        )
        .unwrap();
        let p = a.authenticate(Some(&format!("Bearer {t}"))).unwrap();
        assert_eq!(p.key(), Some("backend"));
        assert!(p.may(Op::Read, "rooms:a1"));
        // the token allows report, the key does not: refused
        assert!(!p.may(Op::Report, "rooms:a1"));
        // the key allows rooms:b, the token does not: refused
        assert!(!p.may(Op::Read, "rooms:b1"));
        assert!(!p.may(Op::Subscribe, "rooms:a1"));
        assert!(p.expires_at().unwrap() >= now() + 59);
        // no cap claim: the key's own
        let t = mint("backend", "backend-secret", None, Duration::from_secs(60)).unwrap();
        let p = a.authenticate(Some(&format!("Bearer {t}"))).unwrap();
        assert!(p.may(Op::Subscribe, "rooms:b1") && !p.may(Op::Read, "games:1"));
    }

    #[test]
    fn bad_tokens_are_told_apart() {
        let a = authn("");
        let key = EncodingKey::from_secret(&keys::token_hmac_key("backend-secret")).unwrap();
        let expired = Claims {
            exp: now() - 5,
            iat: None,
            cap: None,
        };
        let e = a
            .authenticate(Some(&format!(
                "Bearer {}",
                signed(&expired, "backend", &key, Algorithm::HS256)
            )))
            .unwrap_err();
        assert_eq!(e, AuthError::Expired("backend".into()));
        assert!(e.to_string().contains("expired"));
        let fine = Claims {
            exp: now() + 60,
            iat: None,
            cap: None,
        };
        let e = a
            .authenticate(Some(&format!(
                "Bearer {}",
                signed(&fine, "stranger", &key, Algorithm::HS256)
            )))
            .unwrap_err();
        assert_eq!(e, AuthError::UnknownKey("stranger".into()));
        let wrong = EncodingKey::from_secret(&keys::token_hmac_key("other-secret")).unwrap();
        let e = a
            .authenticate(Some(&format!(
                "Bearer {}",
                signed(&fine, "backend", &wrong, Algorithm::HS256)
            )))
            .unwrap_err();
        assert!(matches!(e, AuthError::InvalidToken { .. }), "{e:?}");
        // signed with the raw secret instead of its digest: refused
        let raw = EncodingKey::from_secret(b"backend-secret").unwrap();
        assert!(a
            .authenticate(Some(&format!(
                "Bearer {}",
                signed(&fine, "backend", &raw, Algorithm::HS256)
            )))
            .is_err());
        // no exp
        #[derive(Serialize)]
        struct NoExp {
            iat: u64,
        }
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("backend".into());
        let t = jsonwebtoken::encode(&h, &NoExp { iat: now() }, &key).unwrap();
        let e = a.authenticate(Some(&format!("Bearer {t}"))).unwrap_err();
        assert!(matches!(e, AuthError::InvalidToken { .. }), "{e:?}");
        // an HS256 token naming a key whose algorithm differs
        let e = mint(
            "backend",
            "backend-secret",
            Some(cap(&[("a*b", &["read"])])),
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(e.contains("a*b"));
    }

    #[test]
    fn eddsa_signers_verify_their_tokens_and_cap_them() {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let public = kp.public_key_pem();
        let a = authn(&format!(
            "[signers.issuer]\nalgorithm = \"EdDSA\"\npublic_key = \"\"\"\n{public}\"\"\"\ncapabilities = {{ \"*\" = [\"read\"] }}\n"
        ));
        let key = EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).unwrap();
        let claims = Claims {
            exp: now() + 60,
            iat: None,
            cap: Some(cap(&[("*", &["read", "admin"])])),
        };
        let p = a
            .authenticate(Some(&format!(
                "Bearer {}",
                signed(&claims, "issuer", &key, Algorithm::EdDSA)
            )))
            .unwrap();
        assert_eq!(p.key(), Some("issuer"));
        assert!(p.may(Op::Read, "x"));
        assert!(!p.may(Op::Admin, "x"), "a token cannot widen its signer");
        // an HS256 token naming the signer is refused (no algorithm confusion)
        let hs = EncodingKey::from_secret(public.as_bytes()).unwrap();
        let e = a
            .authenticate(Some(&format!(
                "Bearer {}",
                signed(&claims, "issuer", &hs, Algorithm::HS256)
            )))
            .unwrap_err();
        assert!(matches!(e, AuthError::InvalidToken { .. }), "{e:?}");
    }
}
