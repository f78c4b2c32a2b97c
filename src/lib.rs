//! Agentry: a GraphQL API platform for AI agents.
//!
//! A guided tour, in the order a request meets the code:

/// Agent definitions.
pub mod agents;
/// Users' LLM provider keys: the vault entries, live key tests, usage.
pub mod api_keys;
/// One `Config` from environment and flags, validated at start-up.
pub mod config;
/// Passwords (bcrypt), tokens (JWT, refresh tokens), the vault (AES-256-GCM-SIV).
pub mod crypto;
/// Pool, database bootstrap, embedded migrations, diesel schema.
pub mod db;
/// Where outbound requests users can steer may go: no redirects, no internal addresses.
pub mod egress;
/// `AppError`, the error codes, and their one mapping to GraphQL errors.
pub mod error;
/// Runs: runner, event log, live hub, cancellation, recovery.
pub mod executions;
/// The GraphQL schema, guards, limits, pagination, HTTP and WebSocket transports.
pub mod graphql;
/// LLM providers' wire formats and the pricing table.
pub mod llm;
/// Sign-in with Google, GitHub and Microsoft: code flow with PKCE, linked accounts.
pub mod oauth;
/// Per-client and sign-in rate limits (governor).
pub mod rate_limit;
/// Request ids, client addresses and the identity of the caller.
pub mod request;
/// The axum router: routes, layers, graceful shutdown.
pub mod server;
/// Shared state: pool, config, keys, limiters.
pub mod state;
/// Logging setup.
pub mod telemetry;
/// Accounts, sessions, roles, admin actions, audit log.
pub mod users;
