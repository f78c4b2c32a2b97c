//! Agentry: a GraphQL API platform for AI agents.
//!
//! A guided tour, in the order a request meets the code. The arrows point one way, down this
//! list: transport → schema → a domain's GraphQL → its service → its model → the database.

// Eager pages of eager objects (connections of runs under a connection of agents) nest
// deeper future types than the compiler's default limit of 128 allows.
#![recursion_limit = "256"]

// Start-up: settings, then the state every request shares.
/// One `Config` from environment and flags, validated at start-up.
pub mod config;
/// Shared state: pool, config, keys, limiters, the live hub, the egress-checked HTTP client.
pub mod state;

// A request arrives.
/// What resolvers share: context helpers, role guards, DataLoaders, pagination, query limits.
pub mod graphql;
/// The transport: router and layers, GraphQL over HTTP, WebSocket protocols, persisted queries.
pub mod http;
/// Per-client and sign-in rate limits (governor).
pub mod rate_limit;
/// Who is asking and from where: request ids, client addresses, the viewer.
pub mod request;
/// The executable schema: every domain's roots merged, with the limits of every operation.
pub mod schema;

// The domains, each `graphql.rs` (thin resolvers) → `service.rs` (rules) → `model.rs` (rows).
/// Agent definitions.
pub mod agents;
/// Users' LLM provider keys: the vault entries, live key tests, usage.
pub mod api_keys;
/// Spend budgets and token caps: refused runs, runs stopped mid-stream, admins' ceilings.
pub mod budgets;
/// Crews of agents working through tasks (sequential, or delegated by a manager).
pub mod crews;
/// Runs: runner, event log, live hub, cancellation, recovery.
pub mod executions;
/// The file workspace: uploads, files runs write, downloads.
pub mod files;
/// Sign-in with Google, GitHub and Microsoft: code flow with PKCE, linked accounts.
pub mod oauth;
/// Conversation threads: multi-turn runs with an agent, history trimmed to the context window.
pub mod threads;
/// Agent tools: web search, Wikipedia, calculator, HTTP GET, run by the runner's tool loop.
pub mod tools;
/// Usage reports: runs, tokens and exact cost grouped by day, agent, model, provider, key.
pub mod usage;
/// Accounts, sessions, roles, admin actions, audit log.
pub mod users;
/// Webhooks: signed deliveries of account events from a durable queue, with retries.
pub mod webhooks;

// What the domains stand on.
/// Passwords (bcrypt), tokens (JWT, refresh tokens), the vault (AES-256-GCM-SIV).
pub mod crypto;
/// Pool, database bootstrap, embedded migrations, diesel schema, backups.
pub mod db;
/// Where outbound requests users can steer may go: no redirects, no internal addresses.
pub mod egress;
/// `AppError`, the error codes, and their one mapping to GraphQL errors.
pub mod error;
/// LLM providers' wire formats and the pricing table.
pub mod llm;
/// Logging and metrics.
pub mod telemetry;
