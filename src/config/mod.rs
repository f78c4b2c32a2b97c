//! One `Config`, read from the environment (and the matching CLI flags) and validated at start-up.
//!
//! Development mode fills in missing secrets (persisted under `data_dir`, with a warning);
//! production mode refuses to start without them and names the variable that is missing.

mod oauth;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use base64::Engine;
use clap::{Args, ValueEnum};
use ipnet::IpNet;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};

pub use oauth::OAuthConfig;

/// Where the server runs: development is forgiving, production is strict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Environment {
    /// Readable logs, GraphiQL and introspection on, secrets generated when missing.
    Development,
    /// JSON logs, GraphiQL and introspection off unless enabled, secrets required, HSTS.
    Production,
}

/// Every setting of the server. Field docs double as `--help` text.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// development | production.
    #[arg(
        long = "env",
        env = "AGENTRY_ENV",
        value_enum,
        default_value = "development"
    )]
    pub environment: Environment,

    /// Address the HTTP server listens on.
    #[arg(long, env = "AGENTRY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// PostgreSQL URL; the database is created when missing.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://localhost/agentry"
    )]
    pub database_url: String,

    /// Maximum number of pooled database connections.
    #[arg(long, env = "AGENTRY_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,

    /// HS256 secret for access tokens, at least 32 bytes. Generated in development when unset.
    #[arg(long, env = "AGENTRY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<SecretString>,

    /// Secret-at-rest keys, `id:base64,…` (32-byte keys; the first encrypts, all decrypt).
    /// Generated in development when unset.
    #[arg(long, env = "AGENTRY_ENCRYPTION_KEYS", hide_env_values = true)]
    pub encryption_keys: Option<SecretString>,

    /// Base URL of the OpenAI API (OpenAI-compatible routes below it, e.g. `/models`).
    #[arg(
        long,
        env = "AGENTRY_OPENAI_BASE_URL",
        default_value = "https://api.openai.com/v1"
    )]
    pub openai_base_url: String,

    /// Base URL of the Anthropic API (routes `/v1/...` below it).
    #[arg(
        long,
        env = "AGENTRY_ANTHROPIC_BASE_URL",
        default_value = "https://api.anthropic.com"
    )]
    pub anthropic_base_url: String,

    /// Base URL of Hugging Face's OpenAI-compatible router.
    #[arg(
        long,
        env = "AGENTRY_HUGGINGFACE_BASE_URL",
        default_value = "https://router.huggingface.co/v1"
    )]
    pub huggingface_base_url: String,

    /// Base URL of the Brave Search API (BRAVE keys, the WEB_SEARCH tool).
    #[arg(
        long,
        env = "AGENTRY_BRAVE_BASE_URL",
        default_value = "https://api.search.brave.com"
    )]
    pub brave_base_url: String,

    /// Base URL of the Tavily API (TAVILY keys, the WEB_SEARCH tool).
    #[arg(
        long,
        env = "AGENTRY_TAVILY_BASE_URL",
        default_value = "https://api.tavily.com"
    )]
    pub tavily_base_url: String,

    /// Seconds a provider call (key test, or the wait for a run's first byte) may take.
    #[arg(long, env = "AGENTRY_PROVIDER_TIMEOUT_SECS", default_value_t = 15)]
    pub provider_timeout_secs: u64,

    /// A JSON pricing file (model -> USD per million input/output tokens) merged over the
    /// built-in `pricing.json`.
    #[arg(long, env = "AGENTRY_PRICING_FILE")]
    pub pricing_file: Option<PathBuf>,

    /// Runs a user may have queued or running at once.
    #[arg(long, env = "AGENTRY_MAX_CONCURRENT_EXECUTIONS", default_value_t = 4)]
    pub max_concurrent_executions: i64,

    /// Seconds a run may take before it ends TIMED_OUT.
    #[arg(long, env = "AGENTRY_EXECUTION_TIMEOUT_SECS", default_value_t = 300)]
    pub execution_timeout_secs: u64,

    /// Seconds between a runner's heartbeats; a run silent for 6 heartbeats is declared dead.
    #[arg(long, env = "AGENTRY_EXECUTION_HEARTBEAT_SECS", default_value_t = 5)]
    pub execution_heartbeat_secs: u64,

    /// Attempts to open a provider stream (retrying 429, 5xx and timeouts before any token).
    #[arg(long, env = "AGENTRY_PROVIDER_MAX_ATTEMPTS", default_value_t = 3)]
    pub provider_max_attempts: u32,

    /// First retry delay in milliseconds (doubles per attempt; Retry-After wins when given).
    #[arg(long, env = "AGENTRY_PROVIDER_RETRY_BASE_MS", default_value_t = 500)]
    pub provider_retry_base_ms: u64,

    /// Access token lifetime in seconds.
    #[arg(long, env = "AGENTRY_ACCESS_TOKEN_TTL_SECS", default_value_t = 900)]
    pub access_token_ttl_secs: u64,

    /// Absolute refresh-token family lifetime in seconds (rotation never extends it).
    #[arg(long, env = "AGENTRY_REFRESH_TOKEN_TTL_SECS", default_value_t = 30 * 24 * 3600)]
    pub refresh_token_ttl_secs: u64,

    /// Comma-separated browser origins allowed by CORS and on the WebSocket.
    #[arg(long, env = "AGENTRY_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Comma-separated proxy addresses or CIDRs whose X-Forwarded-For is believed.
    #[arg(long, env = "AGENTRY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpNet>,

    /// IPv6 clients are rate-limited (and their WebSockets counted) per network of this many
    /// leading bits, since one client may hold a whole /64 (32–128).
    #[arg(long, env = "AGENTRY_RATE_LIMIT_IPV6_PREFIX", default_value_t = 64)]
    pub rate_limit_ipv6_prefix: u8,

    /// Comma-separated CIDRs, IP addresses or host names that outbound requests users steer
    /// (CUSTOM endpoints, key tests) may reach although they are not public.
    #[arg(long, env = "AGENTRY_EGRESS_ALLOW", value_delimiter = ',')]
    pub egress_allow: Vec<String>,

    /// bcrypt cost (4..=31); 12 in production.
    #[arg(long, env = "AGENTRY_BCRYPT_COST", default_value_t = 12)]
    pub bcrypt_cost: u32,

    /// Sustained GraphQL operations per second per client (user, else IP).
    #[arg(long, env = "AGENTRY_RATE_LIMIT_PER_SECOND", default_value_t = 20)]
    pub rate_limit_per_second: u32,

    /// Burst of GraphQL operations a client may spend at once.
    #[arg(long, env = "AGENTRY_RATE_LIMIT_BURST", default_value_t = 60)]
    pub rate_limit_burst: u32,

    /// Sign-in attempts (login, register, refreshSession) per minute per IP and per email.
    #[arg(long, env = "AGENTRY_AUTH_RATE_LIMIT_PER_MINUTE", default_value_t = 10)]
    pub auth_rate_limit_per_minute: u32,

    /// Serve GraphiQL on GET /graphql (default: on in development, off in production).
    #[arg(long, env = "AGENTRY_GRAPHIQL")]
    pub graphiql: Option<bool>,

    /// Allow introspection and "did you mean" suggestions (default: development only).
    #[arg(long, env = "AGENTRY_INTROSPECTION")]
    pub introspection: Option<bool>,

    /// Maximum query depth.
    #[arg(long, env = "AGENTRY_MAX_QUERY_DEPTH", default_value_t = 12)]
    pub max_query_depth: usize,

    /// Maximum query complexity (each field costs 1, lists multiply by `first`); graphql-armor's
    /// default cost limit.
    #[arg(long, env = "AGENTRY_MAX_QUERY_COMPLEXITY", default_value_t = 5000)]
    pub max_query_complexity: usize,

    /// Maximum number of aliases in one operation.
    #[arg(long, env = "AGENTRY_MAX_ALIASES", default_value_t = 15)]
    pub max_aliases: usize,

    /// Maximum number of directives in one operation.
    #[arg(long, env = "AGENTRY_MAX_DIRECTIVES", default_value_t = 50)]
    pub max_directives: usize,

    /// Maximum number of operations in one batched request.
    #[arg(long, env = "AGENTRY_MAX_BATCH", default_value_t = 10)]
    pub max_batch: usize,

    /// Maximum HTTP request body in bytes (larger requests get 413).
    #[arg(long, env = "AGENTRY_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Seconds a WebSocket may stay open without `connection_init` (closed with 4408).
    #[arg(long, env = "AGENTRY_WS_INIT_TIMEOUT_SECS", default_value_t = 10)]
    pub ws_init_timeout_secs: u64,

    /// Largest WebSocket message accepted, in bytes.
    #[arg(long, env = "AGENTRY_WS_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub ws_max_message_bytes: usize,

    /// Live streams: the batching window of a run's output, in milliseconds. A token after a
    /// quiet spell is written (and reaches watchers) at once; tokens that keep coming are
    /// coalesced into one event per window.
    #[arg(long, env = "AGENTRY_STREAM_FLUSH_MS", default_value_t = 40)]
    pub stream_flush_ms: u64,

    /// Tools: most model turns of one run's tool loop (an agent's `config.maxToolSteps` may
    /// lower it); a model still calling tools after that many ends the run FAILED.
    #[arg(long, env = "AGENTRY_TOOL_MAX_STEPS", default_value_t = 8)]
    pub tool_max_steps: u32,

    /// Crews: most delegations a HIERARCHICAL crew's manager may make in one crew run; past it
    /// the delegation tool tells the manager to answer with what it has.
    #[arg(long, env = "AGENTRY_CREW_MAX_DELEGATIONS", default_value_t = 10)]
    pub crew_max_delegations: u32,

    /// OpenTelemetry: the OTLP/HTTP collector traces are exported to (the standard variable),
    /// e.g. `http://otel-collector:4318`; spans go to `<endpoint>/v1/traces`. Unset: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otel_endpoint: Option<String>,

    /// OpenTelemetry: `http/protobuf` (the default) or `http/json`.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        default_value = "http/protobuf"
    )]
    pub otel_protocol: String,

    /// OpenTelemetry: the `service.name` of every exported span.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "agentry")]
    pub otel_service_name: String,

    /// Webhooks: seconds one delivery attempt may take (connect, send, answer) before it counts
    /// as failed.
    #[arg(long, env = "AGENTRY_WEBHOOK_TIMEOUT_SECS", default_value_t = 10)]
    pub webhook_timeout_secs: u64,

    /// Webhooks: attempts per delivery before it is given up (FAILED).
    #[arg(long, env = "AGENTRY_WEBHOOK_MAX_ATTEMPTS", default_value_t = 8)]
    pub webhook_max_attempts: u32,

    /// Webhooks: the wait before the first retry, in milliseconds; each further retry waits six
    /// times longer (5 s, 30 s, 3 min, 18 min, 1.8 h, then 10 h at most).
    #[arg(long, env = "AGENTRY_WEBHOOK_RETRY_BASE_MS", default_value_t = 5000)]
    pub webhook_retry_base_ms: u64,

    /// Webhooks: how often each instance looks for due deliveries, in milliseconds.
    #[arg(long, env = "AGENTRY_WEBHOOK_POLL_MS", default_value_t = 1000)]
    pub webhook_poll_ms: u64,

    /// Tools: seconds one tool call may take before it answers the model with a timeout error.
    #[arg(long, env = "AGENTRY_TOOL_TIMEOUT_SECS", default_value_t = 20)]
    pub tool_timeout_secs: u64,

    /// Tools: largest result of one tool call handed to the model (and shown in its TOOL_RESULT
    /// event), in bytes; longer results are cut and say so.
    #[arg(long, env = "AGENTRY_TOOL_RESULT_MAX_BYTES", default_value_t = 16 * 1024)]
    pub tool_result_max_bytes: usize,

    /// Tools: the SearXNG instance WEB_SEARCH queries (its JSON API, `format=json` enabled),
    /// e.g. `http://searxng:8080`. Unset: WEB_SEARCH is unavailable.
    #[arg(long, env = "AGENTRY_SEARXNG_URL")]
    pub searxng_url: Option<String>,

    /// Tools: the MediaWiki API WIKIPEDIA calls; `{lang}` becomes the agent's
    /// `config.wikipediaLanguage` (default `en`).
    #[arg(
        long,
        env = "AGENTRY_WIKIPEDIA_URL",
        default_value = "https://{lang}.wikipedia.org/w/api.php"
    )]
    pub wikipedia_url: String,

    /// Files: largest file uploaded or written by a run, in bytes.
    #[arg(long, env = "AGENTRY_FILE_MAX_BYTES", default_value_t = 1024 * 1024)]
    pub file_max_bytes: usize,

    /// Files: most files one user may keep.
    #[arg(long, env = "AGENTRY_FILES_MAX_PER_USER", default_value_t = 100)]
    pub files_max_per_user: usize,

    /// Files: most bytes one user's files may take together.
    #[arg(long, env = "AGENTRY_FILES_MAX_TOTAL_BYTES", default_value_t = 50 * 1024 * 1024)]
    pub files_max_total_bytes: usize,

    /// Largest output of one run, in bytes; past it the run ends FAILED (output so far kept).
    #[arg(long, env = "AGENTRY_MAX_OUTPUT_BYTES", default_value_t = 1024 * 1024)]
    pub max_output_bytes: usize,

    /// Largest server-sent event (one line or one event) accepted from a provider, in bytes.
    #[arg(long, env = "AGENTRY_SSE_MAX_EVENT_BYTES", default_value_t = 256 * 1024)]
    pub sse_max_event_bytes: usize,

    /// Most bytes of a provider's error body read (the rest is ignored).
    #[arg(long, env = "AGENTRY_PROVIDER_MAX_ERROR_BYTES", default_value_t = 64 * 1024)]
    pub provider_max_error_bytes: usize,

    /// Subscriptions one WebSocket connection may have open at once (closed with 4429 past it).
    #[arg(long, env = "AGENTRY_WS_MAX_SUBSCRIPTIONS", default_value_t = 100)]
    pub ws_max_subscriptions: usize,

    /// Subscriptions one user may have open across all their connections to this process.
    #[arg(
        long,
        env = "AGENTRY_WS_MAX_SUBSCRIPTIONS_PER_USER",
        default_value_t = 1000
    )]
    pub ws_max_subscriptions_per_user: usize,

    /// WebSocket connections this process accepts in total (503 past it).
    #[arg(long, env = "AGENTRY_WS_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub ws_max_connections: usize,

    /// WebSocket connections one client IP may hold open (429 past it).
    #[arg(long, env = "AGENTRY_WS_MAX_CONNECTIONS_PER_IP", default_value_t = 200)]
    pub ws_max_connections_per_ip: usize,

    /// Seconds an anonymous WebSocket (no token in `connection_init`) may stay open without an
    /// active subscription before it is closed (4408).
    #[arg(long, env = "AGENTRY_WS_ANONYMOUS_IDLE_SECS", default_value_t = 60)]
    pub ws_anonymous_idle_secs: u64,

    /// Seconds between WebSocket pings; a peer that answers none within two of them is closed.
    #[arg(long, env = "AGENTRY_WS_KEEPALIVE_SECS", default_value_t = 30)]
    pub ws_keepalive_secs: u64,

    /// Seconds a WebSocket write may wait for a client that does not read before the
    /// connection is closed (4413); slow readers never hold others back or grow memory.
    #[arg(long, env = "AGENTRY_WS_SEND_TIMEOUT_SECS", default_value_t = 10)]
    pub ws_send_timeout_secs: u64,

    /// Seconds an HTTP request may take before it is answered 408.
    #[arg(long, env = "AGENTRY_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,

    /// Sentry DSN: report errors to Sentry (off when unset).
    #[arg(long, env = "SENTRY_DSN", hide_env_values = true)]
    pub sentry_dsn: Option<SecretString>,

    /// Milliseconds a DataLoader waits to gather a batch (longer: fewer, larger batches).
    #[arg(long, env = "AGENTRY_DATALOADER_DELAY_MS", default_value_t = 2)]
    pub dataloader_delay_ms: u64,

    /// Milliseconds an authenticated session is remembered, sparing the session query of the
    /// next requests with the same token (0: off; at most 60000). Revocations still apply at
    /// once: they evict it here and, through NOTIFY, on every server.
    #[arg(long, env = "AGENTRY_SESSION_CACHE_MS", default_value_t = 2000)]
    pub session_cache_ms: u64,

    /// Bearer token required on `GET /metrics` (open when unset; bind privately or set it).
    #[arg(long, env = "AGENTRY_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<SecretString>,

    /// Seconds between readiness turning 503 and the listener closing (lets a load balancer
    /// notice before connections are refused).
    #[arg(long, env = "AGENTRY_SHUTDOWN_DRAIN_SECS", default_value_t = 0)]
    pub shutdown_drain_secs: u64,

    /// Seconds in-flight requests, sockets and runs get to finish after shutdown begins.
    #[arg(long, env = "AGENTRY_SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,

    /// Where development mode keeps generated secrets.
    #[arg(long, env = "AGENTRY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_filter: String,

    /// OAuth sign-in providers and the frontend callbacks they may redirect to.
    #[command(flatten)]
    pub oauth: OAuthConfig,
}

/// A configuration that cannot start a server, with the variable to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required secret is missing in production.
    #[error("{0} is required in production: {1}")]
    Missing(&'static str, &'static str),
    /// A value is present but unusable.
    #[error("{0} is invalid: {1}")]
    Invalid(&'static str, String),
    /// A generated secret could not be persisted.
    #[error("could not keep the generated {0} under {1}: {2}")]
    Persist(&'static str, String, std::io::Error),
}

impl Config {
    /// True in production mode.
    pub fn is_production(&self) -> bool {
        self.environment == Environment::Production
    }

    /// Whether GraphiQL is served on `GET /graphql`.
    pub fn graphiql_enabled(&self) -> bool {
        self.graphiql.unwrap_or(!self.is_production())
    }

    /// Whether introspection and suggestions are on.
    pub fn introspection_enabled(&self) -> bool {
        self.introspection.unwrap_or(!self.is_production())
    }

    /// Access token lifetime.
    pub fn access_token_ttl(&self) -> Duration {
        Duration::from_secs(self.access_token_ttl_secs)
    }

    /// Checks every value and fills in development defaults for missing secrets.
    ///
    /// Called once at start-up, before anything listens: a bad configuration never half-starts.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        self.treat_empty_as_unset();
        if !(4..=31).contains(&self.bcrypt_cost) {
            return Err(ConfigError::Invalid(
                "AGENTRY_BCRYPT_COST",
                format!("must be between 4 and 31, got {}", self.bcrypt_cost),
            ));
        }
        if !(32..=128).contains(&self.rate_limit_ipv6_prefix) {
            return Err(ConfigError::Invalid(
                "AGENTRY_RATE_LIMIT_IPV6_PREFIX",
                format!(
                    "must be between 32 and 128, got {}",
                    self.rate_limit_ipv6_prefix
                ),
            ));
        }
        if self.session_cache_ms > 60_000 {
            return Err(ConfigError::Invalid(
                "AGENTRY_SESSION_CACHE_MS",
                format!(
                    "must be at most 60000 (a minute), got {}",
                    self.session_cache_ms
                ),
            ));
        }
        if self.is_production() && self.bcrypt_cost < 10 {
            return Err(ConfigError::Invalid(
                "AGENTRY_BCRYPT_COST",
                "must be at least 10 in production".into(),
            ));
        }
        for (name, value) in [
            ("AGENTRY_DB_POOL_SIZE", self.db_pool_size),
            (
                "AGENTRY_RATE_LIMIT_PER_SECOND",
                self.rate_limit_per_second as usize,
            ),
            ("AGENTRY_RATE_LIMIT_BURST", self.rate_limit_burst as usize),
            (
                "AGENTRY_AUTH_RATE_LIMIT_PER_MINUTE",
                self.auth_rate_limit_per_minute as usize,
            ),
            ("AGENTRY_MAX_BATCH", self.max_batch),
            ("AGENTRY_TOOL_MAX_STEPS", self.tool_max_steps as usize),
            (
                "AGENTRY_CREW_MAX_DELEGATIONS",
                self.crew_max_delegations as usize,
            ),
            ("AGENTRY_TOOL_TIMEOUT_SECS", self.tool_timeout_secs as usize),
            ("AGENTRY_TOOL_RESULT_MAX_BYTES", self.tool_result_max_bytes),
            (
                "AGENTRY_WEBHOOK_TIMEOUT_SECS",
                self.webhook_timeout_secs as usize,
            ),
            (
                "AGENTRY_WEBHOOK_MAX_ATTEMPTS",
                self.webhook_max_attempts as usize,
            ),
            (
                "AGENTRY_WEBHOOK_RETRY_BASE_MS",
                self.webhook_retry_base_ms as usize,
            ),
            ("AGENTRY_WEBHOOK_POLL_MS", self.webhook_poll_ms as usize),
            ("AGENTRY_FILE_MAX_BYTES", self.file_max_bytes),
            ("AGENTRY_FILES_MAX_PER_USER", self.files_max_per_user),
            ("AGENTRY_FILES_MAX_TOTAL_BYTES", self.files_max_total_bytes),
            (
                "AGENTRY_ACCESS_TOKEN_TTL_SECS",
                self.access_token_ttl_secs as usize,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(name, "must be greater than 0".into()));
            }
        }
        if !matches!(self.otel_protocol.as_str(), "http/protobuf" | "http/json") {
            return Err(ConfigError::Invalid(
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                format!(
                    "`{}` is not supported: use http/protobuf or http/json",
                    self.otel_protocol
                ),
            ));
        }
        if let Some(endpoint) = &self.otel_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("`{endpoint}` is not an http(s) URL like http://otel-collector:4318"),
            ));
        }
        for origin in &self.cors_origins {
            if origin.parse::<http::HeaderValue>().is_err() || !origin.starts_with("http") {
                return Err(ConfigError::Invalid(
                    "AGENTRY_CORS_ORIGINS",
                    format!("`{origin}` is not an origin like https://app.example.com"),
                ));
            }
        }
        for (name, url) in [
            ("AGENTRY_OPENAI_BASE_URL", &self.openai_base_url),
            ("AGENTRY_ANTHROPIC_BASE_URL", &self.anthropic_base_url),
            ("AGENTRY_HUGGINGFACE_BASE_URL", &self.huggingface_base_url),
            (
                "AGENTRY_SEARXNG_URL",
                self.searxng_url.as_ref().unwrap_or(&self.openai_base_url),
            ),
            (
                "AGENTRY_WIKIPEDIA_URL",
                &self.wikipedia_url.replace("{lang}", "en"),
            ),
        ] {
            match url::Url::parse(url) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
                _ => {
                    return Err(ConfigError::Invalid(
                        name,
                        format!("`{url}` is not an http(s) URL"),
                    ));
                }
            }
        }
        // OAuth providers are checked where their registry is built (`AppState::new`): a
        // half-configured provider stops start-up there, naming the variable.
        self.jwt_secret = Some(self.resolve_jwt_secret()?);
        self.encryption_keys = Some(self.resolve_encryption_keys()?);
        Ok(())
    }

    fn resolve_encryption_keys(&self) -> Result<SecretString, ConfigError> {
        const VAR: &str = "AGENTRY_ENCRYPTION_KEYS";
        let keys = match &self.encryption_keys {
            Some(keys) => keys.clone(),
            None if self.is_production() => {
                return Err(ConfigError::Missing(
                    VAR,
                    "set it to `key1:<base64 of 32 random bytes>`, e.g. `key1:$(openssl rand -base64 32)`",
                ));
            }
            None => self.generated_secret("encryption_keys", VAR, || {
                crate::crypto::vault::Vault::generate_key_spec("dev1")
            })?,
        };
        // Parse once here so a bad list stops start-up with the reason.
        crate::crypto::vault::Vault::from_config(&keys)
            .map_err(|e| ConfigError::Invalid(VAR, e.to_string()))?;
        Ok(keys)
    }

    /// `VAR=` (as compose writes for an unset `${VAR:-}`) means "not set", not "set to nothing".
    fn treat_empty_as_unset(&mut self) {
        fn secret(value: &mut Option<SecretString>) {
            if value
                .as_ref()
                .is_some_and(|v| v.expose_secret().trim().is_empty())
            {
                *value = None;
            }
        }
        fn text(value: &mut Option<String>) {
            if value.as_ref().is_some_and(|v| v.trim().is_empty()) {
                *value = None;
            }
        }
        secret(&mut self.jwt_secret);
        secret(&mut self.encryption_keys);
        secret(&mut self.metrics_token);
        secret(&mut self.sentry_dsn);
        text(&mut self.searxng_url);
        let oauth = &mut self.oauth;
        for id in [
            &mut oauth.google_client_id,
            &mut oauth.github_client_id,
            &mut oauth.microsoft_client_id,
        ] {
            text(id);
        }
        for key in [
            &mut oauth.google_client_secret,
            &mut oauth.github_client_secret,
            &mut oauth.microsoft_client_secret,
        ] {
            secret(key);
        }
        text(&mut oauth.github_emails_url);
        self.cors_origins.retain(|o| !o.trim().is_empty());
        oauth.redirect_uris.retain(|u| !u.trim().is_empty());
    }

    fn resolve_jwt_secret(&self) -> Result<SecretString, ConfigError> {
        const VAR: &str = "AGENTRY_JWT_SECRET";
        if let Some(secret) = &self.jwt_secret {
            if secret.expose_secret().len() < 32 {
                return Err(ConfigError::Invalid(
                    VAR,
                    "must be at least 32 bytes".into(),
                ));
            }
            return Ok(secret.clone());
        }
        if self.is_production() {
            return Err(ConfigError::Missing(
                VAR,
                "set it to at least 32 random bytes, e.g. `openssl rand -base64 48`",
            ));
        }
        self.generated_secret("jwt_secret", VAR, || {
            let mut bytes = [0u8; 48];
            rand::rng().fill_bytes(&mut bytes);
            base64::engine::general_purpose::STANDARD.encode(bytes)
        })
    }

    /// Reads a development secret from `data_dir/<file>`, generating and keeping one if absent.
    fn generated_secret(
        &self,
        file: &str,
        var: &'static str,
        generate: impl FnOnce() -> String,
    ) -> Result<SecretString, ConfigError> {
        let path = self.data_dir.join(file);
        let shown = path.display().to_string();
        if let Ok(existing) = std::fs::read_to_string(&path) {
            let existing = existing.trim().to_owned();
            if existing.len() >= 32 {
                return Ok(SecretString::from(existing));
            }
        }
        let secret = generate();
        std::fs::create_dir_all(&self.data_dir)
            .and_then(|()| write_private(&path, &secret))
            .map_err(|e| ConfigError::Persist(var, shown.clone(), e))?;
        tracing::warn!(
            path = %shown,
            "{var} is not set: generated a development secret. Set {var} in production."
        );
        Ok(SecretString::from(secret))
    }
}

/// Writes a file readable only by its owner (on Unix).
fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(contents.as_bytes())
    }
    #[cfg(not(unix))]
    {
        std::fs::write(path, contents)
    }
}
