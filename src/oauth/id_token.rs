//! OpenID Connect ID tokens, verified the way the spec asks (OIDC Core §3.1.3.7): the signature
//! with the provider's published keys (JWKS), the issuer, the audience (our client id), expiry,
//! and the nonce that ties the token to the flow this browser started. Microsoft's profile is
//! read from its ID token this way, so who signs in is `tid:oid` as Microsoft signed it, not what
//! a user-info call or an unverified claim says.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::Engine;
use futures_util::StreamExt;
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    jwk::{Jwk, JwkSet},
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use url::Url;

use crate::error::{AppError, AppResult};

/// How long fetched keys are used before they are fetched again.
const KEYS_TTL: Duration = Duration::from_secs(60 * 60);
/// An unknown key id fetches the keys again, but not more often than this (a flood of tokens
/// with made-up key ids must not become a flood of requests to the provider).
const REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(30);
/// Largest key set read (Microsoft's is a few KiB).
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Longest wait for the key set.
const JWKS_TIMEOUT: Duration = Duration::from_secs(10);
/// Clock skew tolerated on `exp`, `nbf` and `iat`.
const LEEWAY_SECS: u64 = 120;
/// What `{tenantid}` in an issuer template stands for.
const TENANT_PLACEHOLDER: &str = "{tenantid}";

/// The nonce sent with a flow's authorization request: derived from the flow's one-time state,
/// so nothing more is stored, and a token minted for another flow (another state) carries
/// another nonce.
pub fn nonce_for(state: &str) -> String {
    let digest = Sha256::digest([b"agentry-oidc-nonce\0".as_slice(), state.as_bytes()].concat());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
}

/// The claims Agentry reads from a verified Microsoft ID token.
#[derive(Debug, Deserialize)]
pub struct MicrosoftClaims {
    /// The issuer (checked against the template with this token's tenant).
    pub iss: String,
    /// The tenant the account belongs to.
    #[serde(default)]
    pub tid: String,
    /// The account's immutable id within its tenant.
    #[serde(default)]
    pub oid: String,
    /// The nonce of the flow.
    #[serde(default)]
    pub nonce: Option<String>,
    /// Display name, if shared.
    #[serde(default)]
    pub name: Option<String>,
}

/// Verifies one provider's ID tokens, caching its signing keys.
#[derive(Debug)]
pub struct IdTokenVerifier {
    jwks_url: Url,
    issuer_template: String,
    client_id: String,
    keys: Mutex<KeyCache>,
}

#[derive(Debug, Default)]
struct KeyCache {
    set: Option<JwkSet>,
    fetched_at: Option<Instant>,
}

impl IdTokenVerifier {
    /// A verifier for tokens issued to `client_id`, signed by the keys at `jwks_url`, from the
    /// issuer `issuer_template` (with `{tenantid}` standing for the token's `tid`).
    pub fn new(jwks_url: Url, issuer_template: String, client_id: String) -> Self {
        Self {
            jwks_url,
            issuer_template,
            client_id,
            keys: Mutex::new(KeyCache::default()),
        }
    }

    /// Verifies a Microsoft ID token for the flow whose nonce is `nonce`; any failure is a
    /// `PROVIDER_ERROR` that says sign-in did not happen, with the reason in the log only.
    pub async fn verify_microsoft(
        &self,
        http: &reqwest::Client,
        token: &str,
        nonce: &str,
    ) -> AppResult<MicrosoftClaims> {
        self.check(http, token, nonce).await.map_err(|reason| {
            tracing::warn!(provider = "MICROSOFT", %reason, "ID token refused");
            AppError::Provider(
                "Microsoft's answer could not be verified, so you are not signed in: start again"
                    .into(),
            )
        })
    }

    async fn check(
        &self,
        http: &reqwest::Client,
        token: &str,
        nonce: &str,
    ) -> Result<MicrosoftClaims, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("header: {e}"))?;
        // Only the algorithm Microsoft signs with: never `none`, never an HMAC keyed by a
        // public key.
        if header.alg != Algorithm::RS256 {
            return Err(format!("algorithm {:?} is not RS256", header.alg));
        }
        let kid = header.kid.ok_or("no key id")?;
        let jwk = self.key(http, &kid).await?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("key {kid}: {e}"))?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[&self.client_id]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        let claims = jsonwebtoken::decode::<MicrosoftClaims>(token, &key, &validation)
            .map_err(|e| format!("claims: {e}"))?
            .claims;
        if claims.tid.is_empty() || claims.oid.is_empty() {
            return Err("no tid or oid".into());
        }
        let issuer = self
            .issuer_template
            .replace(TENANT_PLACEHOLDER, &claims.tid);
        if claims.iss != issuer {
            return Err(format!("issuer {} is not {issuer}", claims.iss));
        }
        if claims.nonce.as_deref() != Some(nonce) {
            return Err("nonce does not match this flow".into());
        }
        Ok(claims)
    }

    /// The key `kid`, from the cache while it is fresh, else from the provider.
    async fn key(&self, http: &reqwest::Client, kid: &str) -> Result<Jwk, String> {
        let (cached, may_fetch) = {
            let cache = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            let age = cache.fetched_at.map(|at| at.elapsed());
            let fresh = age.is_some_and(|age| age < KEYS_TTL);
            let cached = cache
                .set
                .as_ref()
                .filter(|_| fresh)
                .and_then(|set| set.find(kid).cloned());
            (cached, age.is_none_or(|age| age >= REFETCH_MIN_INTERVAL))
        };
        if let Some(jwk) = cached {
            return Ok(jwk);
        }
        if !may_fetch {
            return Err(format!("unknown key id {kid} (keys fetched moments ago)"));
        }
        let set = self.fetch(http).await?;
        let found = set.find(kid).cloned();
        let mut cache = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        cache.set = Some(set);
        cache.fetched_at = Some(Instant::now());
        found.ok_or_else(|| format!("unknown key id {kid}"))
    }

    async fn fetch(&self, http: &reqwest::Client) -> Result<JwkSet, String> {
        let response = http
            .get(self.jwks_url.clone())
            .timeout(JWKS_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("keys: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("keys: HTTP {}", response.status().as_u16()));
        }
        let mut body = Vec::new();
        let mut chunks = response.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| format!("keys: {e}"))?;
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err("keys: the key set is too large".into());
            }
            body.extend_from_slice(&chunk);
        }
        // Keys of kinds this build cannot use are skipped rather than failing the whole set.
        #[derive(Deserialize)]
        struct RawSet {
            keys: Vec<serde_json::Value>,
        }
        let raw: RawSet = serde_json::from_slice(&body).map_err(|e| format!("keys: {e}"))?;
        Ok(JwkSet {
            keys: raw
                .keys
                .into_iter()
                .filter_map(|k| serde_json::from_value::<Jwk>(k).ok())
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nonce_is_bound_to_the_state_and_url_safe() {
        let a = nonce_for("state-a");
        assert_eq!(a, nonce_for("state-a"));
        assert_ne!(a, nonce_for("state-b"));
        assert_eq!(a.len(), 43);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }
}
