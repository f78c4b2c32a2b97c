//! The operations one connection has open: counted against the per-connection and per-user
//! bounds as the client starts and stops them, refused with a coded error over a bound, and
//! released when they end or the connection closes.

use std::{collections::HashMap, sync::Mutex};

use async_graphql::http::{ClientMessage, WebSocketProtocols};

/// Who serves an open operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// async-graphql's protocol handler.
    General,
    /// The shared `executionEvents` lane, under this generation (a later subscription reusing
    /// the id gets a new one, so what the old one still yields is told apart and dropped).
    Lane(u64),
}

/// The operations a connection has open, holding their owner's per-user slots.
pub(super) struct Operations {
    app: crate::state::AppState,
    active: HashMap<String, Route>,
    /// Whose per-user slots `active` holds (none for anonymous connections).
    user: Option<uuid::Uuid>,
}

/// What became of a `subscribe`.
pub(super) enum Admission {
    /// Counted; pass it on.
    Admitted,
    /// Already open under this id: the new one replaces it (as async-graphql does).
    Duplicate,
    /// Over a bound: answer this error for the operation instead.
    Refused(String),
}

impl Operations {
    /// A connection's empty set.
    pub(super) fn new(app: crate::state::AppState) -> Self {
        Self {
            app,
            active: HashMap::new(),
            user: None,
        }
    }

    /// Whether no operation is open.
    pub(super) fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Counts a starting operation against the connection's and the user's bounds.
    pub(super) fn admit(&mut self, id: &str, user: Option<uuid::Uuid>) -> Admission {
        if self.active.contains_key(id) {
            return Admission::Duplicate;
        }
        let config = &self.app.config;
        if self.active.len() >= config.ws_max_subscriptions {
            return Admission::Refused(format!(
                "this connection has {} subscriptions open, the most allowed \
                 (AGENTRY_WS_MAX_SUBSCRIPTIONS): complete one first",
                self.active.len()
            ));
        }
        if let Some(user) = user {
            if self.user.is_some_and(|held| held != user) {
                return Admission::Refused("the connection's user changed".into());
            }
            if !self
                .app
                .sockets
                .try_subscribe(user, config.ws_max_subscriptions_per_user)
            {
                return Admission::Refused(format!(
                    "you have {} subscriptions open across your connections, the most allowed \
                     (AGENTRY_WS_MAX_SUBSCRIPTIONS_PER_USER): complete some first",
                    config.ws_max_subscriptions_per_user
                ));
            }
            self.user = Some(user);
        }
        self.active.insert(id.to_owned(), Route::General);
        metrics::gauge!(crate::telemetry::names::SUBSCRIPTIONS).increment(1.0);
        Admission::Admitted
    }

    /// Who serves open operation `id`.
    pub(super) fn route(&self, id: &str) -> Option<Route> {
        self.active.get(id).copied()
    }

    /// Sets who serves open operation `id` (a no-op for an id not open).
    pub(super) fn set_route(&mut self, id: &str, route: Route) {
        if let Some(held) = self.active.get_mut(id) {
            *held = route;
        }
    }

    /// Frees the slots of an operation that ended; who served it (`None` for an id not open).
    pub(super) fn release(&mut self, id: &str) -> Option<Route> {
        let route = self.active.remove(id)?;
        metrics::gauge!(crate::telemetry::names::SUBSCRIPTIONS).decrement(1.0);
        if let Some(user) = self.user {
            self.app.sockets.unsubscribe(user, 1);
        }
        Some(route)
    }
}

impl Drop for Operations {
    fn drop(&mut self) {
        metrics::gauge!(crate::telemetry::names::SUBSCRIPTIONS).decrement(self.active.len() as f64);
        if let Some(user) = self.user {
            self.app.sockets.unsubscribe(user, self.active.len());
        }
    }
}

/// The connection's operations, even after a panic elsewhere (the set stays consistent).
pub(super) fn lock_ops(operations: &Mutex<Operations>) -> std::sync::MutexGuard<'_, Operations> {
    operations
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The error message that refuses operation `id`, in the connection's protocol.
pub(super) fn refusal(
    protocol: WebSocketProtocols,
    id: &str,
    message: &str,
    request_id: &str,
) -> String {
    let error = serde_json::json!({
        "message": message,
        "extensions": {
            "code": crate::error::ErrorCode::RateLimited.as_str(),
            "retryAfter": 1,
            "requestId": request_id,
        },
    });
    let payload = match protocol {
        WebSocketProtocols::GraphQLWS => serde_json::json!([error]),
        _ => error,
    };
    serde_json::json!({ "id": id, "type": "error", "payload": payload }).to_string()
}

/// What a client message does to the set of open operations.
pub(super) enum OperationMessage {
    /// `subscribe` (graphql-transport-ws) or `start` (legacy).
    Start,
    /// `complete` (graphql-transport-ws) or `stop` (legacy), or the server's `complete`.
    Stop,
}

/// The kind and id of a message that starts or ends an operation, read by the protocol
/// library's own parser (`ClientMessage`), so that exactly what it would start is counted: an
/// escaped spelling such as `subscrib\u0065`, or the JSON array form `["subscribe", id,
/// payload]` its tagged enum also accepts. A hand-written envelope missed the array form, and
/// such subscribes ran outside the rate limit and the subscription bounds.
///
/// `None` for anything else, including what the library refuses (a `subscribe` or `complete`
/// without an `id`): such a message passes on untouched and the library closes the socket
/// (4400), rather than it acting on an operation a client had named `""`.
pub(super) fn operation_message(bytes: &[u8]) -> Option<(OperationMessage, String)> {
    match ClientMessage::from_bytes(bytes).ok()? {
        ClientMessage::Start { id, .. } => Some((OperationMessage::Start, id)),
        ClientMessage::Stop { id } => Some((OperationMessage::Stop, id)),
        _ => None,
    }
}
