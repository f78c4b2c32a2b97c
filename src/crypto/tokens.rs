//! Access tokens (JWT, HS256 pinned) and refresh tokens (opaque, stored only as a hash).

use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// `iss` of every access token.
pub const ISSUER: &str = "agentry";
/// `aud` of every access token.
pub const AUDIENCE: &str = "agentry-api";
/// `typ` of access tokens; anything else is refused where an access token is expected.
pub const ACCESS_TYPE: &str = "access";

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The user id.
    pub sub: Uuid,
    /// Always [`ISSUER`].
    pub iss: String,
    /// Always [`AUDIENCE`].
    pub aud: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issue time, seconds since the epoch.
    pub iat: i64,
    /// Unique token id.
    pub jti: Uuid,
    /// The session (refresh-token family) the token belongs to.
    pub sid: Uuid,
    /// The role when issued; informational, the server reads the role from the database.
    pub role: String,
    /// Always [`ACCESS_TYPE`].
    pub typ: String,
}

/// Why an access token was refused. The message is safe to show to the client.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Expired.
    #[error("access token expired")]
    Expired,
    /// Anything else: bad signature, algorithm, audience, issuer, type, malformed.
    #[error("invalid access token")]
    Invalid,
}

/// Signs and verifies access tokens with one HS256 secret.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl JwtKeys {
    /// Keys from the configured secret; tokens live `ttl`.
    pub fn new(secret: &SecretString, ttl: Duration) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        // Only HS256: a token naming any other algorithm (or `none`) fails verification.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        // One server signs and checks: no clock skew to forgive, and expiry means expiry.
        validation.leeway = 0;
        Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
            ttl,
        }
    }

    /// Issues an access token for `user` in `session`; returns it with its expiry.
    pub fn issue(
        &self,
        user: Uuid,
        session: Uuid,
        role: &str,
    ) -> anyhow::Result<(String, DateTime<Utc>)> {
        let now = Utc::now();
        let expires = now + self.ttl;
        let claims = AccessClaims {
            sub: user,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            exp: expires.timestamp(),
            iat: now.timestamp(),
            jti: Uuid::now_v7(),
            sid: session,
            role: role.into(),
            typ: ACCESS_TYPE.into(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok((token, expires))
    }

    /// Verifies signature, algorithm, issuer, audience, expiry and type.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let data = jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        if data.claims.typ != ACCESS_TYPE {
            return Err(TokenError::Invalid);
        }
        Ok(data.claims)
    }
}

/// A new opaque refresh token: 256 random bits, URL-safe base64.
pub fn new_refresh_token() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    SecretString::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The stored form of a refresh token: its SHA-256. A database leak reveals no usable token.
pub fn hash_refresh_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> JwtKeys {
        JwtKeys::new(
            &SecretString::from("a".repeat(32)),
            Duration::from_secs(900),
        )
    }

    #[test]
    fn issued_tokens_verify_and_carry_every_claim() {
        let keys = keys();
        let (user, session) = (Uuid::now_v7(), Uuid::now_v7());
        let (token, _) = keys.issue(user, session, "USER").unwrap();
        let claims = keys.verify(&token).unwrap();
        assert_eq!((claims.sub, claims.sid), (user, session));
        assert_eq!(
            (claims.iss.as_str(), claims.aud.as_str()),
            (ISSUER, AUDIENCE)
        );
        assert_eq!(claims.typ, ACCESS_TYPE);
    }

    #[test]
    fn another_secret_does_not_verify() {
        let (token, _) = keys()
            .issue(Uuid::now_v7(), Uuid::now_v7(), "USER")
            .unwrap();
        let other = JwtKeys::new(
            &SecretString::from("b".repeat(32)),
            Duration::from_secs(900),
        );
        assert!(matches!(other.verify(&token), Err(TokenError::Invalid)));
    }

    #[test]
    fn refresh_tokens_are_random_and_hashed() {
        let (a, b) = (new_refresh_token(), new_refresh_token());
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(a.expose_secret().len(), 43);
        assert_eq!(hash_refresh_token(a.expose_secret()).len(), 32);
    }
}
