//! OAUTHBEARER (RFC 7628, Kafka's KIP-255 and KIP-768): the client sends a
//! JWT; the broker checks its signature against the keys of a JWKS file,
//! its expiry (and not-before), and, where configured, its audience and
//! issuer, and takes the principal from a configured claim (`sub`). The
//! session lasts no longer than the token (KIP-368): a client must
//! re-authenticate with a fresh one before it expires.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};

use crate::config::SecuritySection;

/// Longest token taken (an OAuth JWT is a few KiB at most).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The token checks, from `[security]`.
pub struct OAuth {
    keys: JwkSet,
    audience: Option<String>,
    issuer: Option<String>,
    claim: String,
    leeway: Duration,
}

impl OAuth {
    /// The checks, if OAUTHBEARER is offered.
    pub fn load(config: &SecuritySection) -> anyhow::Result<Option<OAuth>> {
        if !config.sasl_mechanisms.iter().any(|m| m == "OAUTHBEARER") {
            return Ok(None);
        }
        let path = &config.oauth_jwks_file;
        if path.as_os_str().is_empty() {
            anyhow::bail!("OAUTHBEARER needs security.oauth_jwks_file (the keys tokens are signed with)");
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let keys: JwkSet = serde_json::from_str(&text).with_context(|| format!("{} is not a JWKS", path.display()))?;
        if keys.keys.is_empty() {
            anyhow::bail!("{} holds no keys", path.display());
        }
        for key in &keys.keys {
            DecodingKey::from_jwk(key).with_context(|| format!("{}: a key that cannot verify", path.display()))?;
        }
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Ok(Some(OAuth {
            keys,
            audience: some(&config.oauth_audience),
            issuer: some(&config.oauth_issuer),
            claim: config.oauth_principal_claim.clone(),
            leeway: Duration::from_millis(config.oauth_clock_skew_ms),
        }))
    }

    /// The principal the client's message authenticates and when its token
    /// expires, or why not.
    pub fn authenticate(&self, message: &[u8]) -> Result<(String, SystemTime), String> {
        let (authzid, token) = bearer_token(message)?;
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("not a JWT: {e}"))?;
        let key = match &header.kid {
            Some(kid) => self.keys.find(kid).ok_or_else(|| format!("no key {kid:?} in the JWKS"))?,
            None if self.keys.keys.len() == 1 => &self.keys.keys[0],
            None => return Err("the token names no key (kid) and the JWKS has several".into()),
        };
        let decoding = DecodingKey::from_jwk(key).map_err(|e| format!("the key: {e}"))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &decoding, &validation)
            .map_err(|e| format!("the token is not valid: {e}"))?
            .claims;
        let principal = claims
            .get(&self.claim)
            .and_then(serde_json::Value::as_str)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| format!("the token has no {:?} claim to name the principal", self.claim))?;
        // RFC 7628: an authorization id other than the token's principal is refused.
        if authzid.is_some_and(|a| a != principal) {
            return Err("the message's authorization id is not the token's principal".into());
        }
        let exp = claims.get("exp").and_then(serde_json::Value::as_u64).ok_or("the token has no numeric exp")?;
        Ok((principal.to_string(), UNIX_EPOCH + Duration::from_secs(exp)))
    }
}

/// The authorization id and token of a client's first message:
/// `gs2-header \x01 auth=Bearer <token> \x01 ... \x01\x01`.
fn bearer_token(message: &[u8]) -> Result<(Option<&str>, &str), String> {
    if message.len() > MAX_TOKEN_BYTES {
        return Err(format!("an OAUTHBEARER message of {} bytes (at most {MAX_TOKEN_BYTES})", message.len()));
    }
    let text = std::str::from_utf8(message).map_err(|_| "an OAUTHBEARER message is not UTF-8")?;
    let (gs2, pairs) = text.split_once('\u{1}').ok_or("an OAUTHBEARER message has no key-value pairs")?;
    if !(gs2.starts_with("n,") || gs2.starts_with("y,")) {
        return Err("channel binding is not supported".into());
    }
    let authzid = gs2[2..].strip_prefix("a=").map(|a| a.trim_end_matches(',')).filter(|a| !a.is_empty());
    let token = pairs
        .split('\u{1}')
        .find_map(|pair| pair.strip_prefix("auth="))
        .and_then(|auth| auth.strip_prefix("Bearer ").or_else(|| auth.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| String::from("an OAUTHBEARER message without auth=Bearer <token>"))?;
    Ok((authzid, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oauth(audience: &str) -> OAuth {
        let keys = serde_json::from_str(
            r#"{"keys":[{"kty":"oct","kid":"k1","alg":"HS256","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}]}"#,
        )
        .unwrap();
        OAuth {
            keys,
            audience: (!audience.is_empty()).then(|| audience.into()),
            issuer: None,
            claim: "sub".into(),
            leeway: Duration::ZERO,
        }
    }

    fn token(claims: serde_json::Value, kid: &str) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(kid.into());
        let key = jsonwebtoken::EncodingKey::from_secret(b"secret-secret-secret-secret");
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    fn message(token: &str) -> Vec<u8> {
        format!("n,,\u{1}host=localhost\u{1}auth=Bearer {token}\u{1}\u{1}").into_bytes()
    }

    #[test]
    fn tokens_are_checked_for_signature_expiry_audience_and_principal() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let good = token(serde_json::json!({"sub": "alice", "exp": now + 60, "aud": "kafka"}), "k1");
        let (principal, expires) = oauth("kafka").authenticate(&message(&good)).unwrap();
        assert_eq!(principal, "alice");
        assert!(expires > SystemTime::now());
        let refused = |o: &OAuth, m: Vec<u8>, why: &str| {
            let error = o.authenticate(&m).unwrap_err();
            assert!(error.contains(why), "{error:?} should say {why:?}");
        };
        refused(&oauth("other"), message(&good), "not valid");
        refused(&oauth(""), message(&token(serde_json::json!({"sub": "a", "exp": now - 120}), "k1")), "not valid");
        refused(&oauth(""), message(&token(serde_json::json!({"sub": "a"}), "k1")), "not valid");
        refused(&oauth(""), message(&token(serde_json::json!({"exp": now + 60}), "k1")), "\"sub\" claim");
        refused(&oauth(""), message(&token(serde_json::json!({"sub": "a", "exp": now + 60}), "k2")), "no key");
        let mut forged = good.clone();
        forged.pop();
        forged.push(if good.ends_with('A') { 'B' } else { 'A' });
        refused(&oauth(""), message(&forged), "not valid");
        refused(&oauth(""), b"n,,\x01auth=Basic abc\x01\x01".to_vec(), "without auth=Bearer");
        refused(&oauth(""), b"garbage".to_vec(), "no key-value pairs");
        let as_bob = format!("n,a=bob,\u{1}auth=Bearer {good}\u{1}\u{1}").into_bytes();
        refused(&oauth("kafka"), as_bob, "authorization id");
        let as_alice = format!("n,a=alice,\u{1}auth=Bearer {good}\u{1}\u{1}").into_bytes();
        assert_eq!(oauth("kafka").authenticate(&as_alice).unwrap().0, "alice");
        // alg "none" (an unsigned token) is not an algorithm jsonwebtoken verifies.
        refused(&oauth(""), message("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0."), "not a JWT");
    }
}
