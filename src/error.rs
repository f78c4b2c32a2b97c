//! `AppError`, the error codes (listed in ARCHITECTURE.md), and the one mapping to GraphQL errors.
//!
//! Services return `AppError`; resolvers use `?` and the `From` impl below turns it into a GraphQL
//! error with `extensions.code` (and `field` / `retryAfter` where they apply). Internal errors are
//! logged here, once, with their cause chain, and reach the client as an opaque message.

use async_graphql::ErrorExtensions;

/// The machine-readable codes a client can rely on (`extensions.code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// No valid credentials for an operation that needs them.
    Unauthenticated,
    /// Signed in, but the role does not allow it.
    Forbidden,
    /// The object does not exist, or belongs to someone else.
    NotFound,
    /// The input breaks a rule; `extensions.field` names the field.
    BadUserInput,
    /// The input clashes with existing state (duplicate, last owner…).
    Conflict,
    /// Too many requests; `extensions.retryAfter` says when to retry.
    RateLimited,
    /// An upstream LLM or OAuth provider failed.
    ProviderError,
    /// A spend budget or token cap does not allow the run (the message names the budget).
    BudgetExceeded,
    /// Something broke on our side; the log has the details.
    Internal,
    /// The document does not parse (the GraphQL spec's name).
    GraphqlParseFailed,
    /// The document breaks a validation rule or a query limit.
    GraphqlValidationFailed,
    /// The request body is over `AGENTRY_MAX_BODY_BYTES` (HTTP 413).
    PayloadTooLarge,
    /// A mutation or subscription sent with GET (HTTP 405).
    MethodNotAllowed,
    /// A persisted query's hash is unknown: send the full query (Apollo's protocol).
    PersistedQueryNotFound,
    /// A persisted-query version other than 1.
    PersistedQueryNotSupported,
}

impl ErrorCode {
    /// The wire form of the code.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Forbidden => "FORBIDDEN",
            Self::NotFound => "NOT_FOUND",
            Self::BadUserInput => "BAD_USER_INPUT",
            Self::Conflict => "CONFLICT",
            Self::RateLimited => "RATE_LIMITED",
            Self::ProviderError => "PROVIDER_ERROR",
            Self::BudgetExceeded => "BUDGET_EXCEEDED",
            Self::Internal => "INTERNAL_SERVER_ERROR",
            Self::GraphqlParseFailed => "GRAPHQL_PARSE_FAILED",
            Self::GraphqlValidationFailed => "GRAPHQL_VALIDATION_FAILED",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::PersistedQueryNotFound => "PERSISTED_QUERY_NOT_FOUND",
            Self::PersistedQueryNotSupported => "PERSISTED_QUERY_NOT_SUPPORTED",
        }
    }
}

/// Every failure a service can report.
///
/// Deliberately not `Display`: async-graphql converts any `Display` type into an error without
/// a code, so a `?` on an `AppError` must go through the `From` impl below, which keeps it.
#[derive(Debug)]
pub enum AppError {
    /// Missing, invalid, expired or revoked credentials.
    Unauthenticated(String),
    /// The caller's role is too low.
    Forbidden(String),
    /// Unknown id, or another user's object (never distinguished).
    NotFound {
        /// What was looked for, e.g. "user".
        what: &'static str,
    },
    /// A rule on one input field was broken.
    BadInput {
        /// The input field, as the client named it (`input.email`, `password`).
        field: String,
        /// The rule, in words.
        message: String,
    },
    /// The operation clashes with existing state.
    Conflict(String),
    /// Over a rate limit.
    RateLimited {
        /// Whole seconds until the next attempt can succeed.
        retry_after_secs: u64,
        /// Which limit, when it is not the request rate (e.g. concurrent runs).
        reason: Option<String>,
    },
    /// An upstream provider failed; the message is safe to show.
    Provider(String),
    /// A budget does not allow the run; the message names the budget and its numbers.
    BudgetExceeded(String),
    /// Anything unexpected; logged, never shown.
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for AppError {
    fn from(err: anyhow::Error) -> Self {
        Self::Internal(err)
    }
}

/// Shorthand for service results.
pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    /// A `BAD_USER_INPUT` error naming `field`.
    pub fn bad_input(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::BadInput {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The message shown to the client (internal errors stay opaque).
    pub fn message(&self) -> String {
        match self {
            Self::Unauthenticated(m)
            | Self::Forbidden(m)
            | Self::Conflict(m)
            | Self::Provider(m)
            | Self::BudgetExceeded(m) => m.clone(),
            Self::NotFound { what } => format!("{what} not found"),
            Self::BadInput { field, message } => format!("{field}: {message}"),
            Self::RateLimited {
                retry_after_secs,
                reason,
            } => match reason {
                Some(reason) => format!("{reason} (retry in {retry_after_secs} s)"),
                None => format!("too many requests: retry in {retry_after_secs} s"),
            },
            Self::Internal(_) => "internal server error".to_owned(),
        }
    }

    /// The code this error is reported with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::NotFound { .. } => ErrorCode::NotFound,
            Self::BadInput { .. } => ErrorCode::BadUserInput,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::Provider(_) => ErrorCode::ProviderError,
            Self::BudgetExceeded(_) => ErrorCode::BudgetExceeded,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }
}

/// Maps a unique-index violation (a concurrent request won the race) to the `conflict` error, and
/// any other database error to an internal one. Use with `map_err`.
pub fn unique_or(
    conflict: impl FnOnce() -> AppError,
) -> impl FnOnce(diesel::result::Error) -> AppError {
    move |err| match err {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        ) => conflict(),
        other => other.into(),
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(err: diesel::result::Error) -> Self {
        Self::Internal(anyhow::Error::new(err).context("database query failed"))
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for AppError {
    fn from(err: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        Self::Internal(anyhow::Error::new(err).context("no database connection available"))
    }
}

impl From<AppError> for async_graphql::Error {
    fn from(err: AppError) -> Self {
        let code = err.code();
        if let AppError::Internal(cause) = &err {
            // The one place internal errors are logged: with the whole cause chain.
            tracing::error!(error = ?cause, "internal error");
        }
        let message = err.message();
        async_graphql::Error::new(message).extend_with(|_, ext| {
            ext.set("code", code.as_str());
            match &err {
                AppError::BadInput { field, .. } => ext.set("field", field.as_str()),
                AppError::RateLimited {
                    retry_after_secs, ..
                } => ext.set("retryAfter", *retry_after_secs),
                _ => {}
            }
        })
    }
}
