//! GraphQL over WebSocket (`graphql-transport-ws`, and the legacy `graphql-ws` protocol that
//! Apollo's subscriptions-transport-ws speaks) on `GET /graphql`.
//!
//! The upgrade is built by hand rather than with async-graphql's ready-made service, to enforce
//! what that service does not: the Origin allowlist, small buffers and a message cap, the
//! `connection_init` deadline (4408), authentication from the init payload (4403 when refused),
//! and closing the socket when its access token expires (4401) or its session is revoked (4403).

use std::{
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_graphql::{
    Data,
    http::{ALL_WEBSOCKET_PROTOCOLS, WebSocketProtocols, WsMessage},
};
use axum::{
    extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use futures_util::{SinkExt, StreamExt, future};
use tokio::{sync::broadcast, time::Instant};

use crate::{
    rate_limit::ClientKey,
    request::{Identity, RequestContext, RequestMeta},
    server::HttpState,
    state::Revocation,
    users::sessions,
};

/// Close codes of the graphql-transport-ws protocol (and two of our own meaning).
mod close {
    /// The client sent something that is not a protocol message.
    pub const BAD_REQUEST: u16 = 4400;
    /// Subscribe before `connection_ack`, or the access token expired.
    pub const UNAUTHORIZED: u16 = 4401;
    /// `connection_init` credentials refused, or the session was revoked.
    pub const FORBIDDEN: u16 = 4403;
    /// No `connection_init` in time.
    pub const INIT_TIMEOUT: u16 = 4408;
    /// Subscriptions over the client's rate limit.
    pub const TOO_MANY_REQUESTS: u16 = 4429;
    /// The server is shutting down (RFC 6455 "going away"): reconnect to another instance.
    pub const GOING_AWAY: u16 = 1001;
}

/// Socket read buffer: small, so idle connections cost kilobytes.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Socket write buffer.
const WRITE_BUFFER_BYTES: usize = 4 * 1024;

/// The authentication state of one connection, shared with the `connection_init` callback.
#[derive(Debug, Clone)]
enum InitState {
    /// No `connection_init` handled yet.
    Pending,
    /// Acknowledged with this identity.
    Ready(Identity),
    /// Credentials refused.
    Refused,
}

/// Checks the Origin and protocol, then upgrades.
pub async fn upgrade(
    http: HttpState,
    upgrade: WebSocketUpgrade,
    origin: Option<String>,
    meta: RequestMeta,
) -> Response {
    let config = &http.app.config;
    // Browsers always send Origin; a cross-site page must not ride on a user's connection.
    // Clients outside browsers send none and are let through (they hold their own tokens).
    if let Some(origin) = origin
        && !config.cors_origins.iter().any(|allowed| allowed == &origin)
    {
        tracing::info!(origin = %origin, "WebSocket refused: origin not allowed");
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let Some(protocol) = upgrade
        .requested_protocols()
        .filter_map(|p| p.to_str().ok())
        .flat_map(|p| p.split(','))
        .find_map(|p| WebSocketProtocols::from_str(p.trim()).ok())
    else {
        return (
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Protocol must be graphql-transport-ws or graphql-ws",
        )
            .into_response();
    };
    let max_message = config.ws_max_message_bytes;
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(max_message.max(WRITE_BUFFER_BYTES) * 4)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| serve(socket, http, protocol, meta))
}

/// Runs one connection until either side ends it.
async fn serve(
    socket: WebSocket,
    http: HttpState,
    protocol: WebSocketProtocols,
    meta: RequestMeta,
) {
    let _open = http.app.sockets.open();
    let (mut sink, stream) = socket.split();
    let init_state = Arc::new(Mutex::new(InitState::Pending));
    let mut revocations = http.app.revocations.subscribe();
    let mut shutdown = http.app.shutdown.subscribe();

    // Every subscription spends a unit of the client's rate limit, like an HTTP operation;
    // over the limit the connection closes with 4429.
    let (over_limit_tx, mut over_limit) = tokio::sync::watch::channel(false);
    let input = {
        let limiters = http.app.limiters.clone();
        let init_state = init_state.clone();
        let ip = meta.ip;
        stream
            .take_while(|message| future::ready(message.is_ok()))
            .filter_map(move |message| {
                let bytes = match message {
                    Ok(Message::Text(text)) => Some(text.as_bytes().to_vec()),
                    Ok(Message::Binary(bytes)) => Some(bytes.to_vec()),
                    _ => None,
                };
                let bytes = bytes.filter(|bytes| {
                    if !starts_operation(bytes) {
                        return true;
                    }
                    let key = match get(&init_state) {
                        InitState::Ready(Identity::User(viewer)) => ClientKey::User(viewer.id()),
                        _ => ClientKey::Ip(ip),
                    };
                    let allowed = limiters.check_client(key, 1).is_ok();
                    if !allowed {
                        over_limit_tx.send_replace(true);
                    }
                    allowed
                });
                future::ready(bytes)
            })
    };

    let on_init = {
        let app = http.app.clone();
        let init_state = init_state.clone();
        let meta = meta.clone();
        move |payload: serde_json::Value| async move {
            let identity = match init_token(&payload) {
                None => Identity::Anonymous,
                Some(token) => match sessions::authenticate(&app, &token).await {
                    Ok(identity) => identity,
                    Err(e) => {
                        let gql: async_graphql::Error = e.into();
                        set(&init_state, InitState::Refused);
                        return Err(gql);
                    }
                },
            };
            if let Identity::Rejected(reason) = &identity {
                set(&init_state, InitState::Refused);
                return Err(async_graphql::Error::new(format!("Forbidden: {reason}")));
            }
            set(&init_state, InitState::Ready(identity.clone()));
            let mut data = Data::default();
            data.insert(RequestContext { meta, identity });
            data.insert(super::loaders::Loaders::new(&app));
            Ok(data)
        }
    };

    let connection = async_graphql::http::WebSocket::new(http.schema.clone(), input, protocol)
        .on_connection_init(on_init);
    futures_util::pin_mut!(connection);

    let init_deadline = Instant::now() + Duration::from_secs(http.app.config.ws_init_timeout_secs);
    let mut expiry: Option<Instant> = None;
    let mut identity: Option<Identity> = None;

    let closing: Option<(u16, String)> = loop {
        let waiting_for_init = identity.is_none();
        tokio::select! {
            message = connection.next() => match message {
                Some(WsMessage::Text(text)) => {
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break None;
                    }
                    if identity.is_none()
                        && let InitState::Ready(ready) = get(&init_state)
                    {
                        expiry = token_deadline(&ready);
                        identity = Some(ready);
                    }
                }
                Some(WsMessage::Close(code, reason)) => {
                    break Some(map_close(code, reason, &get(&init_state)));
                }
                None => break None,
            },
            () = tokio::time::sleep_until(init_deadline), if waiting_for_init => {
                break Some((close::INIT_TIMEOUT, "Connection initialisation timeout".into()));
            }
            () = sleep_until_opt(expiry) => {
                break Some((close::UNAUTHORIZED, "Unauthorized: access token expired".into()));
            }
            () = crate::state::until_set(&mut over_limit) => {
                break Some((close::TOO_MANY_REQUESTS, "Too many requests: slow down".into()));
            }
            () = crate::state::until_set(&mut shutdown) => {
                break Some((close::GOING_AWAY, "server shutting down".into()));
            }
            revocation = revocations.recv() => match revocation {
                Ok(revocation) if concerns(identity.as_ref(), revocation) => {
                    break Some((close::FORBIDDEN, "Forbidden: session revoked".into()));
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break None,
            },
        }
    };
    if let Some((code, reason)) = closing {
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
    }
    let _ = sink.close().await;
}

/// Whether a client message starts an operation (`subscribe`, or legacy `start`).
fn starts_operation(bytes: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: &'a str,
    }
    serde_json::from_slice::<Kind<'_>>(bytes).is_ok_and(|m| matches!(m.kind, "subscribe" | "start"))
}

fn set(state: &Mutex<InitState>, value: InitState) {
    if let Ok(mut guard) = state.lock() {
        *guard = value;
    }
}

fn get(state: &Mutex<InitState>) -> InitState {
    state
        .lock()
        .map(|g| g.clone())
        .unwrap_or(InitState::Refused)
}

/// The access token of a `connection_init` payload: `{"Authorization": "Bearer …"}` (any case
/// of the key, with or without the scheme), or the same inside `headers`.
fn init_token(payload: &serde_json::Value) -> Option<String> {
    let find = |object: &serde_json::Value| {
        object.as_object().and_then(|map| {
            map.iter()
                .find(|(key, _)| key.eq_ignore_ascii_case("authorization"))
                .and_then(|(_, value)| value.as_str())
                .map(|value| {
                    let value = value.trim();
                    match value.split_once(' ') {
                        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                            token.trim().to_owned()
                        }
                        _ => value.to_owned(),
                    }
                })
        })
    };
    find(payload).or_else(|| payload.get("headers").and_then(find))
}

/// When the connection's access token expires.
fn token_deadline(identity: &Identity) -> Option<Instant> {
    let Identity::User(viewer) = identity else {
        return None;
    };
    let left = (viewer.token_expires_at - chrono::Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO);
    Some(Instant::now() + left)
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => future::pending().await,
    }
}

fn concerns(identity: Option<&Identity>, revocation: Revocation) -> bool {
    let Some(Identity::User(viewer)) = identity else {
        return false;
    };
    match revocation {
        Revocation::Session(session) => session == viewer.session_id,
        Revocation::User(user) => user == viewer.id(),
    }
}

/// Maps async-graphql's close codes to the graphql-transport-ws ones.
fn map_close(code: u16, reason: String, state: &InitState) -> (u16, String) {
    match (code, state) {
        (1002, InitState::Refused) => (close::FORBIDDEN, reason),
        (1002, _) => (
            close::BAD_REQUEST,
            format!("Invalid message received: {reason}"),
        ),
        (1011, _) => (close::UNAUTHORIZED, "Unauthorized".into()),
        other => (other.0, reason),
    }
}
