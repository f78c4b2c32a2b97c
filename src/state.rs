//! `AppState`: everything a request may need, built once at start-up and shared by reference.

use std::sync::Arc;

use secrecy::SecretString;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::{
    config::Config,
    crypto::{password::PasswordHasher, tokens::JwtKeys},
    db::Pool,
    rate_limit::RateLimiters,
};

/// Something that ends live WebSocket connections: a revoked session, or every session of a
/// user (suspension, role change, password change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// One session (refresh-token family) was revoked.
    Session(Uuid),
    /// Every session of this user was revoked.
    User(Uuid),
}

/// Shared server state, handed to the schema with `.data()` and to the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Database connection pool.
    pub pool: Pool,
    /// Access-token signing keys.
    pub jwt: JwtKeys,
    /// bcrypt on the blocking pool.
    pub passwords: PasswordHasher,
    /// Per-client and sign-in rate limiters.
    pub limiters: RateLimiters,
    /// Revocations, fanned out to open WebSockets so they close at once.
    pub revocations: broadcast::Sender<Revocation>,
}

impl AppState {
    /// Builds the state from a validated configuration (see [`Config::validate`]).
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let secret: SecretString = config
            .jwt_secret
            .clone()
            .ok_or_else(|| anyhow::anyhow!("configuration was not validated: no JWT secret"))?;
        let pool = crate::db::pool(&config.database_url, config.db_pool_size)?;
        let (revocations, _) = broadcast::channel(256);
        Ok(Self {
            jwt: JwtKeys::new(&secret, config.access_token_ttl()),
            passwords: PasswordHasher::new(config.bcrypt_cost),
            limiters: RateLimiters::new(&config),
            config: Arc::new(config),
            pool,
            revocations,
        })
    }

    /// Announces a revocation to open WebSockets (no-op when none listens).
    pub fn revoke(&self, revocation: Revocation) {
        let _ = self.revocations.send(revocation);
    }
}
