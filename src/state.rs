//! `AppState`: everything a request may need, built once at start-up and shared by reference.

use std::{sync::Arc, time::Duration};

use secrecy::SecretString;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use crate::{
    config::Config,
    crypto::{password::PasswordHasher, tokens::JwtKeys, vault::Vault},
    db::Pool,
    llm::pricing::Pricing,
    rate_limit::RateLimiters,
    users::session_cache::SessionCache,
};

/// A change to who may do what: a revoked session, or every session of a user (suspension,
/// role change, password change), which end live WebSocket connections; a changed user row;
/// and the LISTEN connection's state. The session cache ([`SessionCache`]) follows them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// One session (refresh-token family) was revoked.
    Session(Uuid),
    /// Every session of this user was revoked.
    User(Uuid),
    /// The user's row changed (e.g. the profile) without revoking anything: cached copies of
    /// it are stale. Sockets stay open.
    Changed(Uuid),
    /// Announcements may have been missed (this server's LISTEN connection was down) and are
    /// heard again: every socket checks its own session now. Never sent to other servers.
    Recheck,
    /// This server's LISTEN connection is down: announcements of other servers are not heard
    /// until the next [`Revocation::Recheck`]. Never sent to other servers.
    Unheard,
}

/// The NOTIFY channel that carries revocations to every server on the database (sent by the
/// database's triggers when a user or session changes).
pub const REVOKE_CHANNEL: &str = "agentry_revoke";

impl Revocation {
    /// Reads a NOTIFY payload, `<id>:session`, `<id>:user` or `<id>:changed`, as the database
    /// triggers of migration 000014 write them.
    pub fn from_payload(payload: &str) -> Option<Self> {
        let (id, kind) = payload.split_once(':')?;
        let id = Uuid::parse_str(id).ok()?;
        match kind {
            "session" => Some(Self::Session(id)),
            "user" => Some(Self::User(id)),
            "changed" => Some(Self::Changed(id)),
            _ => None,
        }
    }
}

/// Shared server state, handed to the schema with `.data()` and to the HTTP handlers.
///
/// One `Arc` around everything: axum clones the state into every handler and middleware of
/// every request, so a clone must be one reference count, not a copy of the signing keys and
/// their validation rules (which a profile of `{ __typename }` showed at ~10% of the CPU).
/// Fields are read through `Deref` (`state.pool`, `state.config`).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares: built once at start-up, read by every request.
pub struct Shared {
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
    /// Revocations, fanned out to open WebSockets so they close at once, and to the session
    /// cache.
    pub revocations: broadcast::Sender<Revocation>,
    /// Sessions recently found live (see [`SessionCache`]).
    pub sessions: SessionCache,
    /// SQL statements run through the pool.
    pub query_counter: crate::db::QueryCounter,
    /// Secrets at rest (AES-256-GCM-SIV).
    pub vault: Arc<Vault>,
    /// Model prices.
    pub pricing: Arc<Pricing>,
    /// Outbound HTTP to LLM providers (connection pool shared by all requests): follows no
    /// redirects and resolves names through the egress policy.
    pub http: reqwest::Client,
    /// Where outbound requests users can steer may go (check IP-literal URLs with it).
    pub egress: Arc<crate::egress::Egress>,
    /// Outbound HTTP for URLs a model chooses (the `http_get` tool): like `http`, but under
    /// `tool_egress`, which has none of the operator's allowlist (an allowed Ollama or proxy
    /// host is for provider calls, not for pages read back to a user).
    pub tool_http: reqwest::Client,
    /// The policy of `tool_http`: public addresses only (and loopback in development).
    pub tool_egress: Arc<crate::egress::Egress>,
    /// Live fan-out of run events and status changes, and local cancellation.
    pub hub: Arc<crate::executions::hub::Hub>,
    /// Turns true when the server starts shutting down (readiness fails, sockets close).
    pub shutdown: Arc<watch::Sender<bool>>,
    /// Open WebSocket connections, so shutdown can wait for their close frames.
    pub sockets: Arc<SocketTracker>,
    /// The configured OAuth providers and redirect allowlist.
    pub oauth: Arc<crate::oauth::providers::Registry>,
    /// Outbound HTTP to endpoints the operator configured (OAuth providers, the tools'
    /// search and Wikipedia backends): redirects are never followed (SSRF safety); no address
    /// check, as such a backend may live on a private network. Never for a user-given URL.
    pub operator_http: reqwest::Client,
}

/// Counts open WebSocket connections (in total and per client IP) and subscriptions per user,
/// so each can be bounded, and wakes a waiter when no connection is left.
#[derive(Debug, Default)]
pub struct SocketTracker {
    open: std::sync::atomic::AtomicUsize,
    per_ip: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    subscriptions: std::sync::Mutex<std::collections::HashMap<Uuid, usize>>,
    idle: tokio::sync::Notify,
}

/// Why a WebSocket connection was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketRefusal {
    /// The server holds its maximum of connections.
    ServerFull,
    /// This client IP holds its maximum of connections.
    TooManyFromIp,
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain counters: a panic elsewhere cannot leave them inconsistent.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SocketTracker {
    /// Registers a connection from `ip` unless a bound is reached; dropping the guard
    /// unregisters it.
    pub fn try_open(
        self: &Arc<Self>,
        ip: std::net::IpAddr,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<SocketGuard, SocketRefusal> {
        let mut per_ip = lock(&self.per_ip);
        if self.count() >= max_total {
            return Err(SocketRefusal::ServerFull);
        }
        let from_ip = per_ip.entry(ip).or_insert(0);
        if *from_ip >= max_per_ip {
            return Err(SocketRefusal::TooManyFromIp);
        }
        *from_ip += 1;
        self.open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        metrics::gauge!(crate::telemetry::names::WS_CONNECTIONS).increment(1.0);
        Ok(SocketGuard {
            tracker: self.clone(),
            ip,
        })
    }

    /// Open connections.
    pub fn count(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Takes one of `user`'s subscription slots unless they hold `max` already.
    pub fn try_subscribe(&self, user: Uuid, max: usize) -> bool {
        let mut subscriptions = lock(&self.subscriptions);
        let held = subscriptions.entry(user).or_insert(0);
        if *held >= max {
            return false;
        }
        *held += 1;
        true
    }

    /// Gives back `n` of `user`'s subscription slots.
    pub fn unsubscribe(&self, user: Uuid, n: usize) {
        let mut subscriptions = lock(&self.subscriptions);
        if let Some(held) = subscriptions.get_mut(&user) {
            *held = held.saturating_sub(n);
            if *held == 0 {
                subscriptions.remove(&user);
            }
        }
    }

    /// Resolves once no connection is open.
    pub async fn all_closed(&self) {
        loop {
            let idle = self.idle.notified();
            if self.count() == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// One open WebSocket connection.
pub struct SocketGuard {
    tracker: Arc<SocketTracker>,
    ip: std::net::IpAddr,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        metrics::gauge!(crate::telemetry::names::WS_CONNECTIONS).decrement(1.0);
        {
            let mut per_ip = lock(&self.tracker.per_ip);
            if let Some(n) = per_ip.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    per_ip.remove(&self.ip);
                }
            }
        }
        if self
            .tracker
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.tracker.idle.notify_waiters();
        }
    }
}

impl AppState {
    /// Builds the state from a validated configuration (see [`Config::validate`]).
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let secret: SecretString = config
            .jwt_secret
            .clone()
            .ok_or_else(|| anyhow::anyhow!("configuration was not validated: no JWT secret"))?;
        let keys = config.encryption_keys.clone().ok_or_else(|| {
            anyhow::anyhow!("configuration was not validated: no encryption keys")
        })?;
        let vault = Vault::from_config(&keys)?;
        let pricing = Pricing::load(config.pricing_file.as_deref())?;
        crate::telemetry::metrics();
        let egress = {
            let mut egress =
                crate::egress::Egress::new(&config.egress_allow, !config.is_production())
                    .map_err(anyhow::Error::msg)?;
            for base in [
                &config.openai_base_url,
                &config.anthropic_base_url,
                &config.huggingface_base_url,
                &config.brave_base_url,
                &config.tavily_base_url,
            ] {
                egress.allow_host_of(base);
            }

            Arc::new(egress)
        };
        // Requests users can steer: no redirects, and only addresses the egress policy permits.
        // Requests users (or their models) can steer: no redirects, no proxy from the
        // environment (a proxy would make the checked address the proxy's, not the target's),
        // and only addresses the egress policy permits.
        let checked_client = |egress: &Arc<crate::egress::Egress>| {
            reqwest::Client::builder()
                .user_agent(concat!("agentry/", env!("CARGO_PKG_VERSION")))
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .dns_resolver(egress.resolver())
                .connect_timeout(std::time::Duration::from_secs(config.provider_timeout_secs))
                .build()
        };
        let http = checked_client(&egress)?;
        let tool_egress = Arc::new(
            crate::egress::Egress::new(&[], !config.is_production()).map_err(anyhow::Error::msg)?,
        );
        let tool_http = checked_client(&tool_egress)?;
        let operator_http = reqwest::Client::builder()
            .user_agent(concat!("agentry/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(config.provider_timeout_secs))
            .timeout(std::time::Duration::from_secs(
                config.provider_timeout_secs.saturating_mul(2),
            ))
            .build()?;
        let oauth =
            crate::oauth::providers::Registry::from_config(&config.oauth, config.is_production())?;
        let query_counter = crate::db::QueryCounter::default();
        let pool = crate::db::pool(
            &config.database_url,
            config.db_pool_size,
            query_counter.clone(),
            config.otel_endpoint.is_some(),
        )?;
        let (revocations, _) = broadcast::channel(256);
        let hearing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sessions = SessionCache::new(
            Duration::from_millis(config.session_cache_ms),
            revocations.subscribe(),
            hearing.clone(),
        );
        Ok(Self(Arc::new(Shared {
            query_counter,
            vault: Arc::new(vault),
            pricing: Arc::new(pricing),
            http,
            egress,
            tool_http,
            tool_egress,
            oauth: Arc::new(oauth),
            operator_http,
            hub: crate::executions::hub::Hub::new(pool.clone(), revocations.clone(), hearing),
            shutdown: Arc::new(watch::channel(false).0),
            sockets: Arc::new(SocketTracker::default()),
            jwt: JwtKeys::new(&secret, config.access_token_ttl()),
            passwords: PasswordHasher::new(config.bcrypt_cost),
            limiters: RateLimiters::new(&config),
            config: Arc::new(config),
            pool,
            revocations,
            sessions,
        })))
    }

    /// Whether the server is shutting down.
    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Starts shutting down: readiness fails, WebSockets close with 1001, local runs end with a
    /// terminal event.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
        let runs = self.hub.stop_all_runners();
        tracing::info!(
            runs,
            sockets = self.sockets.count(),
            "shutting down: draining"
        );
    }

    /// Applies a revocation on this server at once, before this returns (so the mutation's
    /// answer cannot overtake it): its open WebSockets of that session or user close and the
    /// session cache forgets it. Other servers hear of the change from the database itself:
    /// the triggers of migration 000014 send it on [`REVOKE_CHANNEL`] when the change commits.
    pub fn revoke(&self, revocation: Revocation) {
        let _ = self.revocations.send(revocation);
    }
}

/// Resolves once a boolean switch (cancel, shutdown) turns true. The watch guard is not held
/// across an await, so the future stays `Send`; a switch whose sender is gone never fires.
pub async fn until_set(switch: &mut watch::Receiver<bool>) {
    if switch.wait_for(|on| *on).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves at `deadline`, or never when there is none (a `select!` arm that is off).
pub async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
