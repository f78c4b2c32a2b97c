//! The transport: the axum router and its layers, the GraphQL-over-HTTP handlers (request
//! parsing, responses, GraphiQL), the WebSocket protocols with their limits, automatic
//! persisted queries, file downloads, and operation metrics. It serves [`crate::schema`]; nothing below it
//! imports anything from here.

mod body;
pub mod files;
pub mod graphql;
pub mod observe;
pub mod persisted;
mod response;
pub mod router;
pub mod ws;

pub use router::{router, serve, shutdown_signal};

/// What the HTTP handlers share: the state and the schema built from it. One `Arc`: axum
/// clones the state into every request (more than once), and each clone of three separately
/// counted parts was three atomic increments and decrements on counters both cores touch (the
/// `{ __typename }` profile showed their drops at about 2.5%).
#[derive(Clone)]
pub struct HttpState(std::sync::Arc<HttpShared>);

impl HttpState {
    /// The state of a router.
    pub fn new(shared: HttpShared) -> Self {
        Self(std::sync::Arc::new(shared))
    }
}

impl std::ops::Deref for HttpState {
    type Target = HttpShared;
    fn deref(&self) -> &HttpShared {
        &self.0
    }
}

/// The parts of [`HttpState`].
pub struct HttpShared {
    /// Shared server state.
    pub app: crate::state::AppState,
    /// The executable schema.
    pub schema: crate::schema::AppSchema,
    /// Automatic persisted queries (Apollo APQ): hash → query text.
    pub persisted: persisted::PersistedQueries,
}

/// The request id of the current request (request extension), echoed as `x-request-id`.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The `x-request-id` header.
pub static REQUEST_ID: axum::http::HeaderName = axum::http::HeaderName::from_static("x-request-id");
