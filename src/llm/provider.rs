//! The streaming provider layer: one chat turn in, a stream of deltas, usage and a finish out,
//! with the providers' failures mapped to errors that are safe to show, bounded waits, and
//! bounded retries before the first token.

use std::{collections::VecDeque, time::Duration};

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::{StreamExt, stream::BoxStream};
use secrecy::{ExposeSecret, SecretString};

use crate::llm::{ProviderKind, anthropic::Anthropic, openai::OpenAiCompatible, scrub};

/// One chat turn to stream.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The provider's model id, e.g. `gpt-4o-mini`.
    pub model: String,
    /// The system prompt.
    pub system: String,
    /// The user's message.
    pub user: String,
    /// Sampling temperature; the provider's default when `None`.
    pub temperature: Option<f64>,
    /// Most tokens to generate; the provider's default when `None` (1024 for Anthropic, which
    /// requires a value).
    pub max_output_tokens: Option<u32>,
}

/// What a provider stream yields.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A piece of the answer, in order.
    Delta(String),
    /// The token counts the provider reported (at most once, just before `Finished`; absent when
    /// the provider reports none).
    Usage {
        /// Prompt tokens.
        input_tokens: i64,
        /// Completion tokens.
        output_tokens: i64,
    },
    /// The answer is complete; always the last item of a successful stream.
    Finished {
        /// Why the model stopped (`stop`, `length`, `end_turn`, `max_tokens` …), if it said.
        stop_reason: Option<String>,
    },
}

/// Why a provider call failed; messages are safe to show (never contain the key — use llm::scrub
/// on anything upstream).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// HTTP 401 or 403.
    #[error("the provider rejected the API key: {0}")]
    Rejected(String),
    /// HTTP 429.
    #[error("the provider is rate-limiting this key: {message}")]
    RateLimited {
        /// How long the provider asked to wait (`retry-after-ms` or `retry-after` seconds).
        retry_after: Option<Duration>,
        /// What the provider said.
        message: String,
    },
    /// HTTP 5xx (including Anthropic's 529), connection failures, a connection lost mid-stream.
    #[error("the provider is unavailable: {0}")]
    Unavailable(String),
    /// Any other 4xx (e.g. an unknown model).
    #[error("the provider refused the request: {0}")]
    BadRequest(String),
    /// The stream broke the wire format (data that is not JSON, an early end).
    #[error("the provider sent a malformed stream: {0}")]
    Malformed(String),
    /// An error event inside a stream (OpenAI `data: {"error":…}`, Anthropic `event: error`).
    #[error("the provider reported an error mid-stream: {0}")]
    Upstream(String),
    /// No response headers, or no stream chunk, within the timeout (whole seconds, rounded up).
    #[error("the provider did not answer within {0} s")]
    Timeout(u64),
}

impl ProviderError {
    /// Whether trying again later may succeed: rate limits, unavailability and timeouts.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. } | Self::Unavailable(_) | Self::Timeout(_)
        )
    }
}

/// A provider's stream: `Ok` items, then either exactly one `Finished` or one `Err`, then the end.
pub type EventStream = BoxStream<'static, Result<StreamEvent, ProviderError>>;

/// What a provider may cost us: time and bytes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The wait for response headers, and for each gap between stream chunks.
    pub timeout: Duration,
    /// The largest server-sent event (lines of one event together) accepted.
    pub max_event_bytes: usize,
    /// The most bytes of an error body read.
    pub max_error_bytes: usize,
}

impl Limits {
    /// The limits an operator configured.
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            timeout: Duration::from_secs(config.provider_timeout_secs),
            max_event_bytes: config.sse_max_event_bytes,
            max_error_bytes: config.provider_max_error_bytes,
        }
    }
}

impl From<Duration> for Limits {
    /// `timeout` with the default size limits (256 KiB events, 64 KiB error bodies).
    fn from(timeout: Duration) -> Self {
        Self {
            timeout,
            max_event_bytes: 256 * 1024,
            max_error_bytes: 64 * 1024,
        }
    }
}

/// A streaming chat provider.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// Starts a streamed completion: resolves once the response headers arrived OK (errors before
    /// streaming are returned here), then yields deltas, usage and exactly one Finished at the
    /// end, or an Err item and then ends.
    async fn stream(&self, request: &ChatRequest) -> Result<EventStream, ProviderError>;
}

/// Builds the provider for a key. `limits.timeout` bounds the wait for response headers and for
/// each gap between stream chunks (an idle stream longer than that yields Err(Timeout) and
/// ends); an event over `limits.max_event_bytes` yields Err(Malformed) and ends.
pub fn for_kind(
    kind: ProviderKind,
    http: reqwest::Client,
    base_url: String,
    secret: SecretString,
    limits: impl Into<Limits>,
) -> Box<dyn Provider> {
    let limits = limits.into();
    match kind {
        ProviderKind::Anthropic => Box::new(Anthropic::new(http, base_url, secret, limits)),
        ProviderKind::OpenAi | ProviderKind::HuggingFace | ProviderKind::Custom => {
            Box::new(OpenAiCompatible::new(http, base_url, secret, limits))
        }
    }
}

/// Longest exponential backoff between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Longest `retry-after` honoured; a provider asking for more is not retried.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Opens the stream with bounded retries: while no event has been delivered, a retryable error is
/// retried up to `max_attempts` total attempts with exponential backoff starting at `base_delay`
/// (doubling, capped at 10 s), honouring RateLimited.retry_after when present (capped at 30 s; if
/// the provider asks for longer than the cap, give up and return the error). Never retries once
/// the stream has started (the caller has seen tokens). Returns the last error when attempts run
/// out.
///
/// To know that no event has been delivered, this waits for the stream's first item (so an idle
/// timeout or a lost connection before the first token is retried too) and hands it back at the
/// front of the returned stream.
pub async fn open_with_retries(
    provider: &dyn Provider,
    request: &ChatRequest,
    max_attempts: u32,
    base_delay: Duration,
) -> Result<EventStream, ProviderError> {
    let max_attempts = max_attempts.max(1);
    let mut attempt = 1;
    loop {
        let error = match provider.stream(request).await {
            Ok(mut stream) => match stream.next().await {
                Some(Err(error)) => error,
                Some(Ok(first)) => {
                    return Ok(futures_util::stream::once(async move { Ok(first) })
                        .chain(stream)
                        .boxed());
                }
                None => return Ok(stream),
            },
            Err(error) => error,
        };
        if !error.is_retryable() || attempt >= max_attempts {
            return Err(error);
        }
        let delay = match &error {
            ProviderError::RateLimited {
                retry_after: Some(wait),
                ..
            } => {
                if *wait > MAX_RETRY_AFTER {
                    return Err(error);
                }
                *wait
            }
            _ => backoff(base_delay, attempt),
        };
        tracing::debug!(attempt, ?delay, %error, "retrying the provider call");
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

/// `base` doubled for each attempt after the first, capped at [`MAX_BACKOFF`].
fn backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
    base.saturating_mul(factor).min(MAX_BACKOFF)
}

/// `timeout` in whole seconds, rounded up (what [`ProviderError::Timeout`] carries).
pub(crate) fn timeout_secs(timeout: Duration) -> u64 {
    let secs = timeout.as_secs();
    if timeout.subsec_nanos() > 0 {
        secs.saturating_add(1)
    } else {
        secs
    }
}

/// Sends `request` and waits (at most `timeout`) for the response headers; a non-success status
/// becomes the matching error, with the provider's message scrubbed of `secret`.
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    limits: Limits,
    secret: &SecretString,
) -> Result<reqwest::Response, ProviderError> {
    let timeout = limits.timeout;
    let response = match tokio::time::timeout(timeout, request.send()).await {
        Err(_) => return Err(ProviderError::Timeout(timeout_secs(timeout))),
        Ok(Err(error)) => return Err(ProviderError::Unavailable(transport_failure(&error))),
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = retry_after(response.headers());
    let body = tokio::time::timeout(timeout, read_capped(response, limits.max_error_bytes))
        .await
        .unwrap_or_default();
    Err(status_error(
        status.as_u16(),
        &body,
        retry_after,
        secret.expose_secret(),
    ))
}

/// The first `max` bytes of a response body (the rest is never read), as text.
pub(crate) async fn read_capped(response: reqwest::Response, max: usize) -> String {
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(Ok(chunk)) = chunks.next().await {
        let room = max.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= max {
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// A failure while reading a streamed body.
#[derive(Debug)]
enum BodyError {
    /// The connection failed.
    Transport(reqwest::Error),
    /// One event grew past the limit (bytes).
    EventTooLarge(usize),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Transport(e) => write!(f, "{e}"),
            Self::EventTooLarge(max) => write!(f, "an event exceeded {max} bytes"),
        }
    }
}

/// The body's chunks, failing once one server-sent event (its lines up to the blank line that
/// ends it) grows past `max` bytes: the SSE parser buffers a whole event, so this bounds it.
fn capped_events<B: AsRef<[u8]>>(
    body: impl futures_util::Stream<Item = reqwest::Result<B>> + Send + 'static,
    max: usize,
) -> impl futures_util::Stream<Item = Result<B, BodyError>> + Send + 'static {
    let mut event_len = 0usize;
    let mut line_empty = true;
    body.map(move |chunk| {
        let chunk = chunk.map_err(BodyError::Transport)?;
        for &byte in chunk.as_ref() {
            match byte {
                b'\n' => {
                    if line_empty {
                        event_len = 0; // a blank line ends the event
                    }
                    line_empty = true;
                }
                b'\r' => {}
                _ => {
                    line_empty = false;
                    event_len += 1;
                    if event_len > max {
                        return Err(BodyError::EventTooLarge(max));
                    }
                }
            }
        }
        Ok(chunk)
    })
}

/// What went wrong with a request that got no response, in words that carry no URL or key.
fn transport_failure(error: &reqwest::Error) -> String {
    if error.is_connect() {
        "could not connect to the provider".to_owned()
    } else if error.is_timeout() {
        "the connection to the provider timed out".to_owned()
    } else {
        "the request to the provider failed".to_owned()
    }
}

/// The wait a 429 asks for: `retry-after-ms` (OpenAI) or `retry-after` in seconds.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    // `try_from` rejects negative, NaN and absurdly large values instead of panicking.
    number("retry-after-ms")
        .and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok())
        .or_else(|| number("retry-after").and_then(|s| Duration::try_from_secs_f64(s).ok()))
}

/// The error for an HTTP failure `status` whose body is `body` (the provider's JSON error, if
/// any, supplies the message).
pub(crate) fn status_error(
    status: u16,
    body: &str,
    retry_after: Option<Duration>,
    secret: &str,
) -> ProviderError {
    let upstream = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| error_message(&v))
        .map(|m| scrub(&m, secret))
        .filter(|m| !m.is_empty());
    let message = match upstream {
        Some(m) => format!("HTTP {status}: {m}"),
        None => format!("HTTP {status}"),
    };
    match status {
        401 | 403 => ProviderError::Rejected(message),
        429 => ProviderError::RateLimited {
            retry_after,
            message,
        },
        500..=599 => ProviderError::Unavailable(message),
        _ => ProviderError::BadRequest(message),
    }
}

/// `error.message` of a provider's error JSON, or `error` itself when it is a string (as some
/// OpenAI-compatible servers send), unscrubbed.
pub(crate) fn error_message(value: &serde_json::Value) -> Option<String> {
    let error = value.get("error")?;
    error
        .get("message")
        .and_then(|m| m.as_str())
        .or_else(|| error.as_str())
        .map(str::to_owned)
}

/// One provider's reading of its server-sent events.
pub(crate) trait SseParser: Send + 'static {
    /// Handles one event, pushing what it yields onto `out` (an `Err` or `Finished` ends the
    /// stream).
    fn event(&mut self, event: Event, out: &mut VecDeque<Result<StreamEvent, ProviderError>>);

    /// The response body ended without a `Finished` or `Err` so far: pushes what to yield last
    /// (ending with a `Finished` or an `Err`).
    fn end(&mut self, out: &mut VecDeque<Result<StreamEvent, ProviderError>>);
}

/// The state of a stream being read.
struct Reader<P> {
    events: BoxStream<'static, Result<Event, EventStreamError<BodyError>>>,
    parser: P,
    pending: VecDeque<Result<StreamEvent, ProviderError>>,
    done: bool,
    timeout: Duration,
}

/// Reads `response` as server-sent events through `parser`, ending after the first `Finished`
/// or `Err`, and failing with `Timeout` when no chunk arrives within `timeout`. Dropping the
/// stream drops the response, which closes the connection.
pub(crate) fn sse_stream<P: SseParser>(
    response: reqwest::Response,
    limits: Limits,
    parser: P,
) -> EventStream {
    let timeout = limits.timeout;
    let reader = Reader {
        events: capped_events(response.bytes_stream(), limits.max_event_bytes)
            .eventsource()
            .boxed(),
        parser,
        pending: VecDeque::new(),
        done: false,
        timeout,
    };
    futures_util::stream::unfold(reader, |mut reader| async move {
        loop {
            if let Some(item) = reader.pending.pop_front() {
                if matches!(item, Err(_) | Ok(StreamEvent::Finished { .. })) {
                    reader.done = true;
                    reader.pending.clear();
                }
                return Some((item, reader));
            }
            if reader.done {
                return None;
            }
            match tokio::time::timeout(reader.timeout, reader.events.next()).await {
                Err(_) => {
                    reader.done = true;
                    let secs = timeout_secs(reader.timeout);
                    return Some((Err(ProviderError::Timeout(secs)), reader));
                }
                Ok(None) => {
                    reader.done = true;
                    reader.parser.end(&mut reader.pending);
                    if reader.pending.is_empty() {
                        reader.pending.push_back(Err(ended_early()));
                    }
                }
                Ok(Some(Err(error))) => {
                    reader.done = true;
                    return Some((Err(stream_failure(&error)), reader));
                }
                Ok(Some(Ok(event))) => reader.parser.event(event, &mut reader.pending),
            }
        }
    })
    .boxed()
}

/// The error for a stream that ended before the provider said it finished.
pub(crate) fn ended_early() -> ProviderError {
    ProviderError::Malformed("stream ended early".to_owned())
}

/// The error for a broken event stream.
fn stream_failure(error: &EventStreamError<BodyError>) -> ProviderError {
    match error {
        EventStreamError::Utf8(_) => ProviderError::Malformed("the stream is not UTF-8".to_owned()),
        EventStreamError::Parser(_) => {
            ProviderError::Malformed("the stream is not server-sent events".to_owned())
        }
        EventStreamError::Transport(BodyError::EventTooLarge(max)) => ProviderError::Malformed(
            format!("the provider sent an event over {max} bytes (AGENTRY_SSE_MAX_EVENT_BYTES)"),
        ),
        EventStreamError::Transport(BodyError::Transport(_)) => {
            ProviderError::Unavailable("the connection broke mid-stream".to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_and_stops_at_ten_seconds() {
        let base = Duration::from_millis(500);
        assert_eq!(backoff(base, 1), Duration::from_millis(500));
        assert_eq!(backoff(base, 2), Duration::from_secs(1));
        assert_eq!(backoff(base, 3), Duration::from_secs(2));
        assert_eq!(backoff(base, 6), Duration::from_secs(10));
        assert_eq!(backoff(base, 60), Duration::from_secs(10));
    }

    #[test]
    fn timeouts_are_reported_in_whole_seconds_rounded_up() {
        assert_eq!(timeout_secs(Duration::from_millis(300)), 1);
        assert_eq!(timeout_secs(Duration::from_secs(30)), 30);
    }

    #[test]
    fn retry_after_reads_milliseconds_or_seconds_and_ignores_nonsense() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = reqwest::header::HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, reqwest::header::HeaderValue::from_static(value));
            }
            map
        };
        assert_eq!(
            retry_after(&headers(&[("retry-after", "2")])),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "250"), ("retry-after", "1")])),
            Some(Duration::from_millis(250))
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "-3")])), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "1e300")])), None);
        assert_eq!(
            retry_after(&headers(&[(
                "retry-after",
                "Wed, 21 Oct 2015 07:28:00 GMT"
            )])),
            None
        );
    }

    #[test]
    fn statuses_map_to_errors_with_the_key_scrubbed() {
        let key = "sk-secret-key-123456";
        let body = format!(r#"{{"error":{{"message":"bad key {key}"}}}}"#);
        let error = status_error(401, &body, None, key);
        assert!(matches!(&error, ProviderError::Rejected(m) if !m.contains(key)));
        assert!(matches!(
            status_error(529, "", None, key),
            ProviderError::Unavailable(_)
        ));
        assert!(matches!(
            status_error(404, r#"{"error":"no such model"}"#, None, key),
            ProviderError::BadRequest(m) if m.contains("no such model")
        ));
    }
}
