//! A local HTTP server that impersonates LLM providers (OpenAI and OpenAI-compatible servers such
//! as Hugging Face's router, Ollama or vLLM, and Anthropic) with their real documented wire
//! formats: model listings, chat completions and messages, streamed as server-sent events, and the
//! providers' own error bodies. Tests script what it does and read back what it received.

use std::{
    collections::HashSet,
    convert::Infallible,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Largest request body the fake reads.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// What the fake does with the next requests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Mode {
    /// Answer as the provider would.
    #[default]
    Normal,
    /// Answer every request with this HTTP status and the provider's JSON error body (OpenAI shape
    /// on OpenAI routes, Anthropic shape on Anthropic routes). When `retry_after_secs` is given,
    /// the response carries a `retry-after: <secs>` header (as both providers do on 429).
    Status {
        /// The HTTP status to answer with.
        status: u16,
        /// Seconds for the `retry-after` header, if any.
        retry_after_secs: Option<u64>,
    },
    /// Fail with this status (and the provider's error body) for the first `times` requests
    /// counted from the moment the mode is set, then behave normally.
    FailTimes {
        /// The HTTP status of the failures.
        status: u16,
        /// How many requests fail before the fake recovers.
        times: usize,
    },
    /// Wait this long before answering anything (to trigger client timeouts), then answer
    /// normally.
    Delay(Duration),
}

/// How streamed completions unfold.
///
/// `error_after`, `malformed_after` and `hang_after` count tokens; a value larger than the number
/// of tokens acts after the last token (before the finishing events). When several are set for
/// the same point, `error_after` wins over `malformed_after`, which wins over `hang_after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamScript {
    /// Content deltas, in order.
    pub tokens: Vec<String>,
    /// Pause before each token.
    pub delay_per_token: Duration,
    /// Prompt tokens reported in usage.
    pub input_tokens: u64,
    /// Completion tokens reported in usage.
    pub output_tokens: u64,
    /// OpenAI: send the final usage chunk (only when the request had
    /// `stream_options.include_usage = true`). Anthropic: when false, `message_start` reports zero
    /// usage and `message_delta` carries no `usage` field.
    pub report_usage: bool,
    /// Anthropic: an `event: ping` before each content delta; OpenAI: a `: keep-alive` SSE comment
    /// before each content chunk.
    pub pings: bool,
    /// After this many tokens, OpenAI sends `data: {"error":{...}}` and ends without `[DONE]`;
    /// Anthropic sends an `event: error` with an `overloaded_error` and ends.
    pub error_after: Option<usize>,
    /// After this many tokens, send a `data:` line that is not valid JSON, then end.
    pub malformed_after: Option<usize>,
    /// After this many tokens, stop sending but keep the connection open until the client goes
    /// away (which then counts as a client disconnect).
    pub hang_after: Option<usize>,
}

impl Default for StreamScript {
    /// Tokens `["Hello", ",", " world", "!"]`, no delay, 12 input and 4 output tokens, usage
    /// reported, no pings, no failures.
    fn default() -> Self {
        Self {
            tokens: ["Hello", ",", " world", "!"].map(String::from).to_vec(),
            delay_per_token: Duration::ZERO,
            input_tokens: 12,
            output_tokens: 4,
            report_usage: true,
            pings: false,
            error_after: None,
            malformed_after: None,
            hang_after: None,
        }
    }
}

/// One scripted model turn that calls tools (instead of answering with the stream script).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolTurn {
    /// Text the model says before its calls (none when empty).
    pub text: String,
    /// The calls: function name and the arguments' JSON text (sent in two pieces, as
    /// providers split them; it may be malformed on purpose).
    pub calls: Vec<(String, String)>,
}

impl ToolTurn {
    /// A turn making `calls` (name, arguments) without text.
    pub fn calls(calls: &[(&str, &str)]) -> Self {
        Self {
            text: String::new(),
            calls: calls
                .iter()
                .map(|(name, args)| ((*name).to_owned(), (*args).to_owned()))
                .collect(),
        }
    }
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Path without the query string, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Headers in arrival order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The JSON body; `Null` if there was none or it was not JSON.
    pub body: Value,
}

impl Recorded {
    /// The first value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The mode and how many failures `Mode::FailTimes` has issued so far.
#[derive(Default)]
struct ModeState {
    mode: Mode,
    failures: usize,
}

/// State shared between the handle and the server.
#[derive(Default)]
struct Inner {
    keys: Mutex<HashSet<String>>,
    mode: Mutex<ModeState>,
    script: Mutex<StreamScript>,
    turns: Mutex<std::collections::VecDeque<ToolTurn>>,
    requests: Mutex<Vec<Recorded>>,
    disconnects: AtomicUsize,
    chunks: AtomicUsize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running fake provider; the server stops when this is dropped.
pub struct FakeProvider {
    addr: std::net::SocketAddr,
    inner: Arc<Inner>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeProvider {
    /// Starts on 127.0.0.1:0 in a tokio task. It accepts no key until `accept_key` is called.
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake provider");
        let addr = listener.local_addr().expect("fake provider address");
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            inner,
            server,
        }
    }

    /// Points every provider base URL of `config` (OpenAI, Hugging Face, Anthropic) at this fake.
    pub fn serve_all_providers(&self, config: &mut agentry::config::Config) {
        let base = self.base_url();
        config.openai_base_url = format!("{base}/v1");
        config.huggingface_base_url = format!("{base}/v1");
        config.anthropic_base_url = base;
    }

    /// e.g. `"http://127.0.0.1:PORT"` (no trailing slash). OpenAI-compatible routes live under
    /// `"/v1"`, as do Anthropic's.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a key the fake accepts (any other key gets the provider's real 401 error body).
    pub fn accept_key(&self, key: &str) {
        lock(&self.inner.keys).insert(key.to_owned());
    }

    /// What the next requests do (applies to all routes until changed; restarts the
    /// `Mode::FailTimes` count).
    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.inner.mode) = ModeState { mode, failures: 0 };
    }

    /// Script for streamed completions (and the content of non-streamed ones).
    pub fn set_stream(&self, script: StreamScript) {
        *lock(&self.inner.script) = script;
    }

    /// Queues a model turn that calls tools: the next streamed completion (either flavor) that
    /// offers tools plays it instead of the stream script (a model calls only tools it was
    /// given: requests without `tools` get the script); turns are used in order, then the
    /// script answers.
    pub fn queue_tool_turn(&self, turn: ToolTurn) {
        lock(&self.inner.turns).push_back(turn);
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.inner.requests).clone()
    }

    /// How many streaming responses were cut short because the client went away (disconnect
    /// detected while sending or while hanging).
    pub fn client_disconnects(&self) -> usize {
        self.inner.disconnects.load(Ordering::SeqCst)
    }

    /// How many chunks (SSE events carrying content) were actually handed to response bodies,
    /// over all streams.
    pub fn chunks_sent(&self) -> usize {
        self.inner.chunks.load(Ordering::SeqCst)
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Which provider a request is talking to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    OpenAi,
    Anthropic,
}

async fn handle(State(inner): State<Arc<Inner>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let method = parts.method.as_str().to_owned();
    let path = parts.uri.path().to_owned();
    let headers = parts.headers;
    lock(&inner.requests).push(Recorded {
        method: method.clone(),
        path: path.clone(),
        headers: headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.clone(),
    });

    let flavor = if path == "/v1/messages" || headers.contains_key("x-api-key") {
        Flavor::Anthropic
    } else {
        Flavor::OpenAi
    };

    let delay = match lock(&inner.mode).mode {
        Mode::Delay(delay) => Some(delay),
        _ => None,
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }

    if let Some(rejection) = check_auth(&inner, flavor, &headers) {
        return rejection;
    }

    if let Some((status, retry_after)) = forced_failure(&inner) {
        let mut response = error_response(flavor, status, "");
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        return response;
    }

    let script = lock(&inner.script).clone();
    match (flavor, method.as_str(), path.as_str()) {
        (Flavor::OpenAi, "GET", "/v1/models") => json_response(
            StatusCode::OK,
            json!({
                "object": "list",
                "data": [
                    {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"},
                    {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"}
                ]
            }),
        ),
        (Flavor::Anthropic, "GET", "/v1/models") => json_response(
            StatusCode::OK,
            json!({
                "data": [{
                    "type": "model",
                    "id": "claude-sonnet-4-20250514",
                    "display_name": "Claude Sonnet 4",
                    "created_at": "2025-05-22T00:00:00Z"
                }],
                "has_more": false,
                "first_id": "claude-sonnet-4-20250514",
                "last_id": "claude-sonnet-4-20250514"
            }),
        ),
        (Flavor::OpenAi, "POST", "/v1/chat/completions") => match next_turn(&inner, &body) {
            Some(turn) if body["stream"] == json!(true) => {
                openai_tool_turn(&inner, &body, &turn, &script)
            }
            _ => openai_chat(&inner, &body, script),
        },
        (Flavor::Anthropic, "POST", "/v1/messages") => match next_turn(&inner, &body) {
            Some(turn) if body["stream"] == json!(true) => {
                anthropic_tool_turn(&inner, &body, &turn, &script)
            }
            _ => anthropic_messages(&inner, &body, script),
        },
        (Flavor::OpenAi, _, _) => json_response(
            StatusCode::NOT_FOUND,
            openai_error(
                &format!("Invalid URL ({method} {path})"),
                "invalid_request_error",
                None,
            ),
        ),
        (Flavor::Anthropic, _, _) => json_response(
            StatusCode::NOT_FOUND,
            anthropic_error("not_found_error", "Not Found"),
        ),
    }
}

/// The provider's 401 (or Anthropic's 400 for a missing version header), if the request fails
/// those checks.
fn check_auth(inner: &Inner, flavor: Flavor, headers: &HeaderMap) -> Option<Response> {
    let keys = lock(&inner.keys);
    match flavor {
        Flavor::OpenAi => {
            let authorization = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let key = authorization
                .and_then(|a| a.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|key| !key.is_empty());
            let Some(key) = key else {
                return Some(json_response(
                    StatusCode::UNAUTHORIZED,
                    openai_error(
                        "You didn't provide an API key. You need to provide your API key in an \
                         Authorization header using Bearer auth (i.e. Authorization: Bearer \
                         YOUR_KEY), or as the password field (with blank username) if you're \
                         accessing the API from your browser and are prompted for a username and \
                         password. You can obtain an API key from \
                         https://platform.openai.com/account/api-keys.",
                        "invalid_request_error",
                        None,
                    ),
                ));
            };
            if keys.contains(key) {
                None
            } else {
                Some(error_response(Flavor::OpenAi, 401, key))
            }
        }
        Flavor::Anthropic => {
            let key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
            match key {
                None => Some(json_response(
                    StatusCode::UNAUTHORIZED,
                    anthropic_error("authentication_error", "x-api-key header is required"),
                )),
                Some(key) if !keys.contains(key) => {
                    Some(error_response(Flavor::Anthropic, 401, key))
                }
                Some(_) if !headers.contains_key("anthropic-version") => Some(json_response(
                    StatusCode::BAD_REQUEST,
                    anthropic_error(
                        "invalid_request_error",
                        "anthropic-version: header is required",
                    ),
                )),
                Some(_) => None,
            }
        }
    }
}

/// The status (and retry-after) to fail this request with, if the mode says so.
fn forced_failure(inner: &Inner) -> Option<(u16, Option<u64>)> {
    let mut state = lock(&inner.mode);
    match state.mode {
        Mode::Status {
            status,
            retry_after_secs,
        } => Some((status, retry_after_secs)),
        Mode::FailTimes { status, times } if state.failures < times => {
            state.failures += 1;
            Some((status, None))
        }
        _ => None,
    }
}

/// `sk-…` shown the way OpenAI masks keys: first 3 characters, `***`, last 4.
fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let head: String = chars.iter().take(3).collect();
    let tail: String = chars[chars.len().saturating_sub(4)..].iter().collect();
    format!("{head}***{tail}")
}

fn openai_error(message: &str, kind: &str, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

fn anthropic_error(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// The provider's error response for `status`; `key` is the rejected key for a 401.
fn error_response(flavor: Flavor, status: u16, key: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match flavor {
        Flavor::OpenAi => match status {
            401 => openai_error(
                &format!(
                    "Incorrect API key provided: {}. You can find your API key at \
                     https://platform.openai.com/account/api-keys.",
                    mask_key(key)
                ),
                "invalid_request_error",
                Some("invalid_api_key"),
            ),
            429 => openai_error(
                "Rate limit reached",
                "requests",
                Some("rate_limit_exceeded"),
            ),
            500.. => openai_error(
                "The server had an error while processing your request.",
                "server_error",
                None,
            ),
            _ => openai_error(
                code.canonical_reason().unwrap_or("Request failed"),
                "invalid_request_error",
                None,
            ),
        },
        Flavor::Anthropic => {
            let (kind, message) = match status {
                400 => ("invalid_request_error", "Invalid request"),
                401 => ("authentication_error", "invalid x-api-key"),
                403 => ("permission_error", "Your API key does not have permission"),
                404 => ("not_found_error", "Not Found"),
                413 => (
                    "request_too_large",
                    "Request exceeds the maximum allowed size",
                ),
                429 => ("rate_limit_error", "Rate limited"),
                529 => ("overloaded_error", "Overloaded"),
                500.. => ("api_error", "Internal server error"),
                _ => ("invalid_request_error", "Invalid request"),
            };
            anthropic_error(kind, message)
        }
    };
    json_response(code, body)
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// One event's bytes, and whether it carries content (counts toward `chunks_sent`).
struct Event {
    bytes: Bytes,
    content: bool,
}

impl Event {
    fn data(data: &Value) -> Self {
        Self::raw(format!("data: {data}\n\n"), false)
    }

    fn named(name: &str, data: &Value) -> Self {
        Self::raw(format!("event: {name}\ndata: {data}\n\n"), false)
    }

    fn raw(text: String, content: bool) -> Self {
        Self {
            bytes: Bytes::from(text),
            content,
        }
    }

    fn content(mut self) -> Self {
        self.content = true;
        self
    }
}

/// How a stream's middle part ends.
enum Ending {
    /// The finishing events follow.
    Finish,
    /// This error event, then the end.
    Error(Event),
    /// This broken event, then the end.
    Malformed(Event),
    /// Nothing more, but the connection stays open.
    Hang,
}

/// What interrupts a stream, in order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Interrupt {
    Error,
    Malformed,
    Hang,
}

/// After how many of `len` tokens the script interrupts a stream, and how, if it does.
fn interruption(script: &StreamScript, len: usize) -> Option<(usize, Interrupt)> {
    [
        (script.error_after, Interrupt::Error),
        (script.malformed_after, Interrupt::Malformed),
        (script.hang_after, Interrupt::Hang),
    ]
    .into_iter()
    .filter_map(|(at, kind)| at.map(|at| (at.min(len), kind)))
    .min()
}

/// The events of one streamed response.
struct Plan {
    /// Sent first.
    head: Vec<Event>,
    /// One per token, each preceded by `ping` if any and by the script's delay.
    tokens: Vec<Event>,
    /// Interleaved before each token.
    ping: Option<Bytes>,
    /// What happens after the tokens.
    ending: Ending,
    /// Sent after the tokens when the ending is `Finish`.
    tail: Vec<Event>,
}

/// The sending side of a streamed body.
struct Sink {
    tx: mpsc::Sender<Bytes>,
    inner: Arc<Inner>,
}

impl Sink {
    /// Hands `event` to the body; false (and one disconnect counted) if the client went away.
    async fn send(&self, event: Event) -> bool {
        if self.tx.send(event.bytes).await.is_err() {
            self.disconnected();
            return false;
        }
        if event.content {
            self.inner.chunks.fetch_add(1, Ordering::SeqCst);
        }
        true
    }

    /// Sends every event; false if the client went away.
    async fn send_all(&self, events: Vec<Event>) -> bool {
        for event in events {
            if !self.send(event).await {
                return false;
            }
        }
        true
    }

    /// Waits `delay`; false (and one disconnect counted) if the client goes away meanwhile.
    async fn pause(&self, delay: Duration) -> bool {
        if delay.is_zero() {
            return true;
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.tx.closed() => {
                self.disconnected();
                false
            }
        }
    }

    fn disconnected(&self) {
        self.inner.disconnects.fetch_add(1, Ordering::SeqCst);
    }

    /// Plays `plan` out.
    async fn play(self, plan: Plan, delay: Duration) {
        if !self.send_all(plan.head).await {
            return;
        }
        for event in plan.tokens {
            if !self.pause(delay).await {
                return;
            }
            if let Some(ping) = &plan.ping {
                let ping = Event {
                    bytes: ping.clone(),
                    content: false,
                };
                if !self.send(ping).await {
                    return;
                }
            }
            if !self.send(event).await {
                return;
            }
        }
        match plan.ending {
            Ending::Finish => {
                self.send_all(plan.tail).await;
            }
            Ending::Error(event) | Ending::Malformed(event) => {
                self.send(event).await;
            }
            Ending::Hang => {
                self.tx.closed().await;
                self.disconnected();
            }
        }
    }
}

/// Plays `plan` in a spawned task (channel capacity 1, so a gone client is noticed at the next
/// send) and returns the SSE response reading it.
fn sse_response(inner: &Arc<Inner>, plan: Plan, delay: Duration) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let sink = Sink {
        tx,
        inner: inner.clone(),
    };
    tokio::spawn(sink.play(plan, delay));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(bytes), rx))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// `POST /v1/chat/completions`, streamed or not.
fn openai_chat(inner: &Arc<Inner>, body: &Value, script: StreamScript) -> Response {
    if !body.is_object() {
        return json_response(
            StatusCode::BAD_REQUEST,
            openai_error(
                "We could not parse the JSON body of your request. (HINT: This likely means \
                 you aren't using your HTTP library correctly. The OpenAI API expects a JSON \
                 payload, but what was sent was not valid JSON. If you have trouble figuring \
                 out how to fix this, please contact us through our help center at \
                 help.openai.com.)",
                "invalid_request_error",
                None,
            ),
        );
    }
    let Some(model) = body["model"].as_str() else {
        return json_response(
            StatusCode::BAD_REQUEST,
            openai_error(
                "you must provide a model parameter",
                "invalid_request_error",
                None,
            ),
        );
    };
    if !body["messages"].is_array() {
        return json_response(
            StatusCode::BAD_REQUEST,
            openai_error(
                "Missing required parameter: 'messages'.",
                "invalid_request_error",
                Some("missing_required_parameter"),
            ),
        );
    }
    let id = new_id("chatcmpl-");
    let created = unix_now();
    let usage = json!({
        "prompt_tokens": script.input_tokens,
        "completion_tokens": script.output_tokens,
        "total_tokens": script.input_tokens + script.output_tokens,
    });
    if body["stream"] != json!(true) {
        return json_response(
            StatusCode::OK,
            json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": script.tokens.concat(), "refusal": null},
                    "logprobs": null,
                    "finish_reason": "stop"
                }],
                "usage": usage,
                "system_fingerprint": "fp_fake"
            }),
        );
    }
    let include_usage = body["stream_options"]["include_usage"] == json!(true);
    let chunk = |delta: Value, finish: Value| {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    };
    let head = vec![Event::data(&chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    ))];
    let (cut, ending) = match interruption(&script, script.tokens.len()) {
        None => (script.tokens.len(), Ending::Finish),
        Some((at, Interrupt::Error)) => (
            at,
            Ending::Error(Event::data(&openai_error(
                "The server had an error while processing your request.",
                "server_error",
                None,
            ))),
        ),
        Some((at, Interrupt::Malformed)) => (
            at,
            Ending::Malformed(Event::raw(
                format!(
                    "data: {{\"id\":\"{id}\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\n\n"
                ),
                false,
            )),
        ),
        Some((at, Interrupt::Hang)) => (at, Ending::Hang),
    };
    let tokens = script.tokens[..cut]
        .iter()
        .map(|token| Event::data(&chunk(json!({"content": token}), Value::Null)).content())
        .collect();
    let mut tail = vec![Event::data(&chunk(json!({}), json!("stop")))];
    if include_usage && script.report_usage {
        tail.push(Event::data(&json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [],
            "usage": usage,
        })));
    }
    tail.push(Event::raw("data: [DONE]\n\n".to_owned(), false));
    let plan = Plan {
        head,
        tokens,
        ping: script
            .pings
            .then(|| Bytes::from_static(b": keep-alive\n\n")),
        ending,
        tail,
    };
    sse_response(inner, plan, script.delay_per_token)
}

/// `POST /v1/messages`, streamed or not.
fn anthropic_messages(inner: &Arc<Inner>, body: &Value, script: StreamScript) -> Response {
    let invalid = |message: &str| {
        json_response(
            StatusCode::BAD_REQUEST,
            anthropic_error("invalid_request_error", message),
        )
    };
    if !body.is_object() {
        return invalid("There was an issue with your request body: expected a JSON object");
    }
    let Some(model) = body["model"].as_str() else {
        return invalid("model: Field required");
    };
    if !body["max_tokens"].is_u64() {
        return invalid("max_tokens: Field required");
    }
    if !body["messages"].is_array() {
        return invalid("messages: Field required");
    }
    let id = new_id("msg_");
    if body["stream"] != json!(true) {
        return json_response(
            StatusCode::OK,
            json!({
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": script.tokens.concat()}],
                "stop_reason": "end_turn",
                "stop_sequence": null,
                "usage": {"input_tokens": script.input_tokens, "output_tokens": script.output_tokens}
            }),
        );
    }
    let start_usage = if script.report_usage {
        json!({"input_tokens": script.input_tokens, "output_tokens": 1})
    } else {
        json!({"input_tokens": 0, "output_tokens": 0})
    };
    let head = vec![
        Event::named(
            "message_start",
            &json!({
                "type": "message_start",
                "message": {
                    "id": id,
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": model,
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": start_usage
                }
            }),
        ),
        Event::named(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    let (cut, ending) = match interruption(&script, script.tokens.len()) {
        None => (script.tokens.len(), Ending::Finish),
        Some((at, Interrupt::Error)) => (
            at,
            Ending::Error(Event::named(
                "error",
                &anthropic_error("overloaded_error", "Overloaded"),
            )),
        ),
        Some((at, Interrupt::Malformed)) => (
            at,
            Ending::Malformed(Event::raw(
                "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\n\n".to_owned(),
                false,
            )),
        ),
        Some((at, Interrupt::Hang)) => (at, Ending::Hang),
    };
    let tokens = script.tokens[..cut]
        .iter()
        .map(|token| {
            Event::named(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": token}}),
            )
            .content()
        })
        .collect();
    let mut message_delta = json!({
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": null},
    });
    if script.report_usage {
        message_delta["usage"] = json!({"output_tokens": script.output_tokens});
    }
    let tail = vec![
        Event::named(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ),
        Event::named("message_delta", &message_delta),
        Event::named("message_stop", &json!({"type": "message_stop"})),
    ];
    let plan = Plan {
        head,
        tokens,
        ping: script
            .pings
            .then(|| Bytes::from_static(b"event: ping\ndata: {\"type\": \"ping\"}\n\n")),
        ending,
        tail,
    };
    sse_response(inner, plan, script.delay_per_token)
}

/// The arguments' text in two pieces (providers stream them in fragments).
fn halves(text: &str) -> (String, String) {
    let mut mid = text.len() / 2;
    while !text.is_char_boundary(mid) {
        mid -= 1;
    }
    (text[..mid].to_owned(), text[mid..].to_owned())
}

/// A streamed Chat Completions turn that calls tools: `delta.tool_calls` pieces by `index`,
/// `finish_reason: "tool_calls"`, usage, `[DONE]`.
fn openai_tool_turn(
    inner: &Arc<Inner>,
    body: &Value,
    turn: &ToolTurn,
    script: &StreamScript,
) -> Response {
    let id = new_id("chatcmpl-");
    let created = unix_now();
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let chunk = |delta: Value, finish: Value| {
        Event::data(&json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        }))
    };
    let head = vec![chunk(
        json!({"role": "assistant", "content": null}),
        Value::Null,
    )];
    let mut tokens = Vec::new();
    if !turn.text.is_empty() {
        tokens.push(chunk(json!({"content": turn.text}), Value::Null).content());
    }
    for (i, (name, arguments)) in turn.calls.iter().enumerate() {
        tokens.push(chunk(
            json!({"tool_calls": [{"index": i, "id": new_id("call_"), "type": "function",
                   "function": {"name": name, "arguments": ""}}]}),
            Value::Null,
        ));
        let (first, second) = halves(arguments);
        for piece in [first, second] {
            tokens.push(
                chunk(
                    json!({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}),
                    Value::Null,
                )
                .content(),
            );
        }
    }
    let mut tail = vec![chunk(json!({}), json!("tool_calls"))];
    if body["stream_options"]["include_usage"] == json!(true) && script.report_usage {
        tail.push(Event::data(&json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [],
            "usage": {"prompt_tokens": script.input_tokens, "completion_tokens": 7,
                      "total_tokens": script.input_tokens + 7},
        })));
    }
    tail.push(Event::raw("data: [DONE]\n\n".to_owned(), false));
    play_turn(inner, head, tokens, tail, script)
}

/// A streamed Messages turn that calls tools: `tool_use` blocks with `input_json_delta`s,
/// `stop_reason: "tool_use"`.
fn anthropic_tool_turn(
    inner: &Arc<Inner>,
    body: &Value,
    turn: &ToolTurn,
    script: &StreamScript,
) -> Response {
    let model = body["model"].as_str().unwrap_or_default();
    let head = vec![Event::named(
        "message_start",
        &json!({"type": "message_start", "message": {
            "id": new_id("msg_"), "type": "message", "role": "assistant", "content": [],
            "model": model, "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": script.input_tokens, "output_tokens": 1}}}),
    )];
    let mut tokens = Vec::new();
    let mut index = 0;
    if !turn.text.is_empty() {
        tokens.push(Event::named(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ));
        tokens.push(
            Event::named(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": turn.text}}),
            )
            .content(),
        );
        tokens.push(Event::named(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ));
        index = 1;
    }
    for (name, arguments) in &turn.calls {
        tokens.push(Event::named("content_block_start", &json!({"type": "content_block_start", "index": index,
            "content_block": {"type": "tool_use", "id": new_id("toolu_"), "name": name, "input": {}}})));
        let (first, second) = halves(arguments);
        for piece in [first, second] {
            tokens.push(
                Event::named(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "input_json_delta", "partial_json": piece}}),
                )
                .content(),
            );
        }
        tokens.push(Event::named(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        ));
        index += 1;
    }
    let tail = vec![
        Event::named(
            "message_delta",
            &json!({"type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 7}}),
        ),
        Event::named("message_stop", &json!({"type": "message_stop"})),
    ];
    play_turn(inner, head, tokens, tail, script)
}

/// Streams a tool turn's events (the script's delay before each of `tokens`).
fn play_turn(
    inner: &Arc<Inner>,
    head: Vec<Event>,
    tokens: Vec<Event>,
    tail: Vec<Event>,
    script: &StreamScript,
) -> Response {
    let plan = Plan {
        head,
        tokens,
        ping: None,
        ending: Ending::Finish,
        tail,
    };
    sse_response(inner, plan, script.delay_per_token)
}

/// The queued tool turn for a request that offers tools, if any.
fn next_turn(inner: &Inner, body: &Value) -> Option<ToolTurn> {
    let offers_tools = body["tools"].as_array().is_some_and(|t| !t.is_empty());
    if !offers_tools {
        return None;
    }
    lock(&inner.turns).pop_front()
}
