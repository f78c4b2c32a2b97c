//! GraphQL over WebSocket (`graphql-transport-ws`, and the legacy `graphql-ws` protocol that
//! Apollo's subscriptions-transport-ws speaks) on `GET /graphql`.
//!
//! The upgrade is built by hand rather than with async-graphql's ready-made service, to enforce
//! what that service does not: the Origin allowlist, small buffers and a message cap, the
//! `connection_init` deadline (4408), authentication from the init payload (4403 when refused),
//! and closing the socket when its access token expires (4401) or its session is revoked (4403).
//!
//! Everything a client controls is bounded: connections in total (503) and per IP (429),
//! subscriptions per connection and per user (refused with a `RATE_LIMITED` error for that
//! operation), anonymous connections with nothing to follow (closed after an idle period,
//! 4408), dead peers (pings; closed after two silent intervals) and slow readers (a write that
//! cannot complete within `AGENTRY_WS_SEND_TIMEOUT_SECS` closes the socket with 4413, so a
//! client that does not read never holds memory or other clients back).

use std::{
    collections::HashMap,
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
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
use futures_util::{FutureExt, SinkExt, StreamExt, future};
use tokio::{
    sync::{broadcast, mpsc, watch},
    time::Instant,
};
use tokio_stream::StreamMap;

use crate::{
    http::HttpState,
    rate_limit::ClientKey,
    request::{Identity, RequestContext, RequestMeta, Viewer},
    state::{AppState, Revocation, SocketGuard, SocketRefusal},
    users::sessions,
};

mod events;
mod operations;

use operations::{
    Admission, OperationMessage, Operations, Route, lock_ops, operation_message, refusal,
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
    /// The client does not read what it is sent (slow reader): reconnect and resume each
    /// `executionEvents` with `after` = the last sequence seen.
    pub const SLOW_READER: u16 = 4413;
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
    let slot = match http.app.sockets.try_open(
        crate::rate_limit::network_of(meta.ip, config.rate_limit_ipv6_prefix),
        config.ws_max_connections,
        config.ws_max_connections_per_ip,
    ) {
        Ok(slot) => slot,
        Err(refusal) => {
            let (status, message, reason) = match refusal {
                SocketRefusal::ServerFull => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this server holds its maximum of WebSocket connections: retry shortly",
                    "server_full",
                ),
                SocketRefusal::TooManyFromIp => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many WebSocket connections from your address: close some first",
                    "per_ip",
                ),
            };
            closed_by_limit(reason);
            return (status, [(http::header::RETRY_AFTER, "5")], message).into_response();
        }
    };
    let max_message = config.ws_max_message_bytes;
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(max_message.max(WRITE_BUFFER_BYTES) * 4)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| serve(socket, http, protocol, meta, slot))
}

/// Why a write to the client did not happen.
enum SendFailure {
    /// The connection is gone.
    Closed,
    /// The client did not take the message in time.
    SlowReader,
}

/// Most messages written together (one flush) when the protocol has several ready.
const MAX_BURST: usize = 64;

/// Writes one message, giving up when the client does not read it within `limit`.
async fn send_within(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    message: Message,
    limit: Duration,
) -> Result<(), SendFailure> {
    send_all_within(sink, std::iter::once(message), limit).await
}

/// Writes messages with one flush at the end (one system call for a burst rather than one per
/// message: under load a socket following several runs has many ready at once), giving up when
/// the client does not take them within `limit`.
async fn send_all_within(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    messages: impl IntoIterator<Item = Message>,
    limit: Duration,
) -> Result<(), SendFailure> {
    let write = async {
        for message in messages {
            sink.feed(message).await?;
        }
        sink.flush().await
    };
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(SendFailure::Closed),
        Err(_) => Err(SendFailure::SlowReader),
    }
}

/// What the reading half checks on every client message before async-graphql sees it: that
/// the peer is alive, the client's rate limit, and the bounds on open operations.
struct Gate {
    /// The limiters (and, through `operations`, the per-user bounds).
    app: AppState,
    /// The protocol refusals are written in.
    protocol: WebSocketProtocols,
    /// The upgrade request's id and client address.
    meta: RequestMeta,
    /// Who the connection is, once `connection_init` was answered.
    init_state: Arc<Mutex<InitState>>,
    /// The connection's open operations.
    operations: Arc<Mutex<Operations>>,
    /// Milliseconds since `opened` at which the client last sent anything (pongs included).
    last_heard: Arc<AtomicU64>,
    /// When the connection opened.
    opened: Instant,
    /// Errors for refused operations, written by the main loop.
    refusals: mpsc::Sender<String>,
    /// Set when the client goes over its rate limit (the connection closes with 4429).
    over_limit: watch::Sender<bool>,
    /// Subscriptions handed to the shared `executionEvents` lane, and their stops.
    lane: mpsc::UnboundedSender<LaneCommand>,
    /// The generation of the lane's last subscription (see [`Route::Lane`]).
    lane_generation: AtomicU64,
}

/// What the reading half tells the main loop about the shared lane's subscriptions.
enum LaneCommand {
    /// Serve this subscription.
    Start {
        /// The operation id.
        id: String,
        /// Its route (the generation its messages carry).
        generation: u64,
        /// Its messages.
        messages: events::LaneStream,
    },
    /// Stop serving operation `id` (if it is still this generation); answer `complete` if it
    /// was still running and `confirm` (the client stopped it), silently if not (a new
    /// subscribe under the same id replaces it).
    Stop {
        id: String,
        generation: u64,
        confirm: bool,
    },
}

impl Gate {
    /// Notes that the client is alive; the message's bytes if they may pass on to the protocol
    /// (not when refused, nor when the shared lane took the operation).
    fn pass(&self, message: Result<Message, axum::Error>) -> Option<Vec<u8>> {
        self.last_heard.store(
            u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let bytes = match message {
            Ok(Message::Text(text)) => text.as_bytes().to_vec(),
            Ok(Message::Binary(bytes)) => bytes.to_vec(),
            _ => return None,
        };
        let Some((kind, id)) = operation_message(&bytes) else {
            return Some(bytes);
        };
        match kind {
            OperationMessage::Stop => {
                let route = lock_ops(&self.operations).release(&id);
                if let Some(Route::Lane(generation)) = route {
                    self.tell_lane(LaneCommand::Stop {
                        id,
                        generation,
                        confirm: true,
                    });
                    return None;
                }
                Some(bytes)
            }
            OperationMessage::Start => {
                let viewer = match get(&self.init_state) {
                    InitState::Ready(Identity::User(viewer)) => Some(viewer),
                    _ => None,
                };
                match self.admit(&id, viewer.as_deref().map(Viewer::id)) {
                    Admitted::No => return None,
                    Admitted::Yes => {}
                    // A new subscribe under an open id replaces the old operation.
                    Admitted::Duplicate => match lock_ops(&self.operations).route(&id) {
                        Some(Route::Lane(generation)) => self.tell_lane(LaneCommand::Stop {
                            id: id.clone(),
                            generation,
                            confirm: false,
                        }),
                        // async-graphql replaces it (and the new one must stay with it).
                        _ => return Some(bytes),
                    },
                }
                let limits = events::Limits {
                    depth: self.app.config.max_query_depth,
                    complexity: self.app.config.max_query_complexity,
                };
                if let Some(viewer) = viewer
                    && let Some(request) = events::recognize(&bytes, limits)
                {
                    metrics::counter!(crate::telemetry::names::WS_SHARED_SUBSCRIPTIONS)
                        .increment(1);
                    let generation = self.lane_generation.fetch_add(1, Ordering::Relaxed) + 1;
                    lock_ops(&self.operations).set_route(&id, Route::Lane(generation));
                    let events = events::follow(self.app.clone(), *viewer, &request);
                    let messages = events::lane(self.protocol, id.clone(), request.view, events);
                    self.tell_lane(LaneCommand::Start {
                        id,
                        generation,
                        messages,
                    });
                    return None;
                }
                lock_ops(&self.operations).set_route(&id, Route::General);
                Some(bytes)
            }
        }
    }

    /// Queues a command for the main loop (which is gone only when the connection is).
    fn tell_lane(&self, command: LaneCommand) {
        let _ = self.lane.send(command);
    }

    /// Whether a starting operation may run. Every subscription spends a unit of the
    /// client's rate limit, like an HTTP operation, and holds a slot of the connection's and the
    /// user's bounds until it ends; a refused one is answered with a coded error instead.
    fn admit(&self, id: &str, user: Option<uuid::Uuid>) -> Admitted {
        let key = user.map_or(ClientKey::Ip(self.meta.ip), ClientKey::User);
        if self.app.limiters.check_client(key, 1).is_err() {
            self.over_limit.send_replace(true);
            return Admitted::No;
        }
        match lock_ops(&self.operations).admit(id, user) {
            Admission::Admitted => Admitted::Yes,
            Admission::Duplicate => Admitted::Duplicate,
            Admission::Refused(message) => {
                let answer = refusal(self.protocol, id, &message, &self.meta.request_id);
                // Bounded: a client that provokes more refusals at once than the main
                // loop can write is over any sane rate, and is closed.
                if self.refusals.try_send(answer).is_err() {
                    self.over_limit.send_replace(true);
                }
                Admitted::No
            }
        }
    }
}

/// Whether a starting operation may run.
enum Admitted {
    /// Counted: it runs.
    Yes,
    /// Already open under this id: the new one replaces it.
    Duplicate,
    /// Refused (the refusal is on its way, or the connection is closing).
    No,
}

/// Answers `connection_init`: authenticates the payload's token (none: anonymous) and gives
/// the connection's operations their request context and DataLoaders.
async fn connection_init(
    app: AppState,
    init_state: Arc<Mutex<InitState>>,
    meta: RequestMeta,
    payload: serde_json::Value,
) -> async_graphql::Result<Data> {
    let identity = match init_token(&payload) {
        None => Identity::Anonymous,
        Some(token) => match sessions::authenticate(&app, &token).await {
            Ok(identity) => identity,
            Err(e) => {
                set(&init_state, InitState::Refused);
                return Err(e.into());
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
    data.insert(crate::graphql::loaders::Loaders::new(&app));
    Ok(data)
}

/// The protocol's messages ready after `first` (up to [`MAX_BURST`] in all), to write at once,
/// and what ended the burst if it was not a text message (`Some(None)`: the protocol ended).
/// Each `complete` the protocol yields frees its operation's slot at once, before the protocol
/// is polled again (and so before it reads another client message, which could reuse the id).
fn take_burst(
    first: String,
    connection: &mut (impl futures_util::Stream<Item = WsMessage> + Unpin),
    operations: &Mutex<Operations>,
) -> (Vec<String>, Option<Option<WsMessage>>) {
    ended(&first, operations);
    let mut burst = vec![first];
    while burst.len() < MAX_BURST {
        match connection.next().now_or_never() {
            Some(Some(WsMessage::Text(more))) => {
                ended(&more, operations);
                burst.push(more);
            }
            Some(other) => return (burst, Some(other)),
            None => break,
        }
    }
    (burst, None)
}

/// Frees the slot of an operation async-graphql ends with this message, if it is one of its
/// `complete`s and the id is still async-graphql's (the lane frees its own).
fn ended(text: &str, operations: &Mutex<Operations>) {
    if text.starts_with(r#"{"type":"complete""#)
        && let Some((_, id)) = operation_message(text.as_bytes())
    {
        let mut ops = lock_ops(operations);
        if ops.route(&id) == Some(Route::General) {
            ops.release(&id);
        }
    }
}

/// The protocol's side of a connection: async-graphql reading the client's messages through
/// `gate` and answering `connection_init` with [`connection_init`].
fn speak_protocol(
    http: &HttpState,
    client: futures_util::stream::SplitStream<WebSocket>,
    gate: Gate,
) -> impl futures_util::Stream<Item = WsMessage> + Send + use<> {
    let protocol = gate.protocol;
    let on_init = {
        let app = gate.app.clone();
        let init_state = gate.init_state.clone();
        let meta = gate.meta.clone();
        move |payload| connection_init(app, init_state, meta, payload)
    };
    let input = client
        .take_while(|message| future::ready(message.is_ok()))
        .filter_map(move |message| future::ready(gate.pass(message)));
    async_graphql::http::WebSocket::new(http.schema.clone(), input, protocol)
        .on_connection_init(on_init)
}

/// Writes a burst of messages within the send limit.
async fn write_burst(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    burst: Vec<String>,
    limit: Duration,
) -> Result<(), SendFailure> {
    let messages = burst.into_iter().map(|text| Message::Text(text.into()));
    send_all_within(sink, messages, limit).await
}

/// The shared lane's subscriptions on one connection: their message streams by operation id,
/// and the generation each was started under.
#[derive(Default)]
struct Lane {
    streams: StreamMap<String, events::LaneStream>,
    generations: HashMap<String, u64>,
}

impl Lane {
    /// Carries out a command from the gate; the message to write for it, if any.
    fn apply(&mut self, command: LaneCommand) -> Option<String> {
        match command {
            LaneCommand::Start {
                id,
                generation,
                messages,
            } => {
                self.generations.insert(id.clone(), generation);
                self.streams.insert(id, messages);
                None
            }
            LaneCommand::Stop {
                id,
                generation,
                confirm,
            } => {
                let current = self.generations.get(&id).copied();
                if current == Some(generation) {
                    self.generations.remove(&id);
                    self.streams.remove(&id);
                }
                // The client stopped it: confirm, as async-graphql does, also when its stream
                // had just ended (its own `complete` was dropped, the gate having released it
                // first). A newer subscription under the id is not this one's business.
                (confirm && current.is_none_or(|g| g == generation)).then(|| events::complete(&id))
            }
        }
    }

    /// The messages of the lane ready now (at most [`MAX_BURST`] taken), starting with `first`;
    /// messages of a stream whose id the client stopped or reused since are dropped, and a
    /// stream that ended frees its slot.
    fn take_burst(
        &mut self,
        first: (String, events::LaneMessage),
        operations: &Mutex<Operations>,
    ) -> Vec<String> {
        let mut burst = Vec::new();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some((id, message)) = next {
            taken += 1;
            let generation = self.generations.get(&id).copied().unwrap_or_default();
            let mut ops = lock_ops(operations);
            let current = ops.route(&id) == Some(Route::Lane(generation));
            if message.last {
                // Off the map now, so a stop crossing the end answers once.
                self.streams.remove(&id);
                self.generations.remove(&id);
                if current {
                    ops.release(&id);
                }
            }
            drop(ops);
            if current {
                burst.push(message.text);
            }
            if taken >= MAX_BURST {
                break;
            }
            next = self.streams.next().now_or_never().flatten();
        }
        burst
    }
}

/// What a revocation notice means for a connection.
enum Revoked {
    /// Nothing: the connection goes on.
    No,
    /// Its session or user was revoked: close with 4403.
    Yes,
    /// The notices ended (the server is stopping).
    Closed,
}

/// Whether a revocation notice (or a gap in them) revokes this connection's session.
async fn revoked(
    app: &AppState,
    identity: Option<&Identity>,
    notice: Result<Revocation, broadcast::error::RecvError>,
) -> Revoked {
    match notice {
        Ok(revocation) if concerns(identity, revocation) => Revoked::Yes,
        // Revocations were (or may have been) missed: check this socket's session now.
        Ok(Revocation::Recheck) | Err(broadcast::error::RecvError::Lagged(_)) => match identity {
            Some(Identity::User(viewer)) if !sessions::still_valid(app, viewer).await => {
                Revoked::Yes
            }
            _ => Revoked::No,
        },
        Ok(_) => Revoked::No,
        Err(broadcast::error::RecvError::Closed) => Revoked::Closed,
    }
}

/// Counts a connection closed by one of the bounds, by reason.
fn closed_by_limit(reason: &'static str) {
    metrics::counter!(crate::telemetry::names::WS_CLOSED_BY_LIMIT, "reason" => reason).increment(1);
}

/// Runs one connection until either side ends it: the protocol's messages out (in bursts, each
/// within the send limit), refusals, pings, and every reason to close (init deadline, idle
/// anonymous, token expiry, rate limit, revocation, shutdown, slow reader, dead peer).
async fn serve(
    socket: WebSocket,
    http: HttpState,
    protocol: WebSocketProtocols,
    meta: RequestMeta,
    _slot: SocketGuard,
) {
    let app = http.app.clone();
    let config = app.config.clone();
    let (mut sink, stream) = socket.split();
    let init_state = Arc::new(Mutex::new(InitState::Pending));
    let mut revocations = app.revocations.subscribe();
    let mut shutdown = app.shutdown.subscribe();
    let operations = Arc::new(Mutex::new(Operations::new(app.clone())));
    let opened = Instant::now();
    let last_heard = Arc::new(AtomicU64::new(0));
    let (refusals_tx, mut refusals) = mpsc::channel::<String>(32);
    let (over_limit_tx, mut over_limit) = watch::channel(false);
    // Unbounded, yet bounded in practice: a start follows an admitted subscribe (rate-limited,
    // and holding a slot), a stop needs an open lane operation.
    let (lane_tx, mut lane_commands) = mpsc::unbounded_channel::<LaneCommand>();
    let mut lane = Lane::default();

    let gate = Gate {
        app: app.clone(),
        protocol,
        meta: meta.clone(),
        init_state: init_state.clone(),
        operations: operations.clone(),
        last_heard: last_heard.clone(),
        opened,
        refusals: refusals_tx,
        over_limit: over_limit_tx,
        lane: lane_tx,
        lane_generation: AtomicU64::new(0),
    };
    let connection = speak_protocol(&http, stream, gate);
    futures_util::pin_mut!(connection);

    let send_limit = Duration::from_secs(config.ws_send_timeout_secs.max(1));
    let keepalive = Duration::from_secs(config.ws_keepalive_secs.max(1));
    let anonymous_idle = Duration::from_secs(config.ws_anonymous_idle_secs.max(1));
    let init_deadline = Instant::now() + Duration::from_secs(config.ws_init_timeout_secs);
    let mut pings = tokio::time::interval_at(Instant::now() + keepalive, keepalive);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut expiry: Option<Instant> = None;
    let mut identity: Option<Identity> = None;
    let mut idle_since = Instant::now();

    let closing: Option<(u16, String)> = loop {
        let waiting_for_init = identity.is_none();
        // An anonymous connection following nothing is closed after a while.
        let idle_deadline = match identity {
            Some(Identity::Anonymous) => {
                if !lock_ops(&operations).is_empty() {
                    idle_since = Instant::now();
                }
                Some(idle_since + anonymous_idle)
            }
            _ => None,
        };
        let sent = tokio::select! {
            message = connection.next() => match message {
                Some(WsMessage::Text(text)) => {
                    // Take along what else is ready, to write the burst at once.
                    let (burst, then) = take_burst(text, &mut connection, &operations);
                    // What the gate told the lane while reading those messages comes first
                    // (a `complete` confirming a lane operation the client stopped precedes
                    // the protocol's answers to what the client sent after it).
                    let mut answers = Vec::new();
                    while let Ok(command) = lane_commands.try_recv() {
                        answers.extend(lane.apply(command));
                    }
                    answers.extend(burst);
                    let sent = write_burst(&mut sink, answers, send_limit).await;
                    if identity.is_none()
                        && let InitState::Ready(ready) = get(&init_state)
                    {
                        expiry = token_deadline(&ready);
                        identity = Some(ready);
                        idle_since = Instant::now();
                    }
                    match then {
                        Some(Some(WsMessage::Close(code, reason))) if sent.is_ok() => {
                            break Some(map_close(code, reason, &get(&init_state)));
                        }
                        Some(None) if sent.is_ok() => break None,
                        _ => {}
                    }
                    sent
                }
                Some(WsMessage::Close(code, reason)) => {
                    break Some(map_close(code, reason, &get(&init_state)));
                }
                None => break None,
            },
            Some(first) = lane.streams.next(), if !lane.streams.is_empty() => {
                // Take along what else the lane has ready, to write the burst at once.
                let burst = lane.take_burst(first, &operations);
                write_burst(&mut sink, burst, send_limit).await
            }
            Some(command) = lane_commands.recv() => match lane.apply(command) {
                Some(answer) => send_within(&mut sink, Message::Text(answer.into()), send_limit).await,
                None => Ok(()),
            },
            Some(answer) = refusals.recv() => {
                send_within(&mut sink, Message::Text(answer.into()), send_limit).await
            }
            _ = pings.tick() => {
                let silent = opened.elapsed().saturating_sub(Duration::from_millis(
                    last_heard.load(Ordering::Relaxed),
                ));
                if silent > keepalive * 2 {
                    closed_by_limit("dead_peer");
                    break None; // nobody is there to read a close frame
                }
                send_within(&mut sink, Message::Ping(Vec::new().into()), send_limit).await
            }
            () = tokio::time::sleep_until(init_deadline), if waiting_for_init => {
                break Some((close::INIT_TIMEOUT, "Connection initialisation timeout".into()));
            }
            () = crate::state::sleep_until_opt(idle_deadline) => {
                if lock_ops(&operations).is_empty() {
                    closed_by_limit("anonymous_idle");
                    break Some((close::INIT_TIMEOUT, "Idle anonymous connection closed: sign in or subscribe".into()));
                }
                Ok(())
            }
            () = crate::state::sleep_until_opt(expiry) => {
                break Some((close::UNAUTHORIZED, "Unauthorized: access token expired".into()));
            }
            () = crate::state::until_set(&mut over_limit) => {
                break Some((close::TOO_MANY_REQUESTS, "Too many requests: slow down".into()));
            }
            () = crate::state::until_set(&mut shutdown) => {
                break Some((close::GOING_AWAY, "server shutting down".into()));
            }
            notice = revocations.recv() => match revoked(&app, identity.as_ref(), notice).await {
                Revoked::No => Ok(()),
                Revoked::Yes => break Some((close::FORBIDDEN, "Forbidden: session revoked".into())),
                Revoked::Closed => break None,
            },
        };
        match sent {
            Ok(()) => {}
            Err(SendFailure::Closed) => break None,
            Err(SendFailure::SlowReader) => {
                closed_by_limit("slow_reader");
                tracing::info!(request_id = %meta.request_id, "WebSocket closed: the client stopped reading");
                break Some((
                    close::SLOW_READER,
                    "Slow reader: the client did not read in time".into(),
                ));
            }
        }
    };
    // The close frame is best effort: a client that stopped reading never takes it.
    let goodbye = async {
        if let Some((code, reason)) = closing {
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                })))
                .await;
        }
        let _ = sink.close().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), goodbye).await;
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

fn concerns(identity: Option<&Identity>, revocation: Revocation) -> bool {
    let Some(Identity::User(viewer)) = identity else {
        return false;
    };
    match revocation {
        Revocation::Session(session) => session == viewer.session_id,
        Revocation::User(user) => user == viewer.id(),
        Revocation::Changed(_) | Revocation::Recheck | Revocation::Unheard => false,
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
