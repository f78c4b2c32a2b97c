//! The HTTP and SSE plumbing every wire format shares: sending with a bounded wait for headers,
//! statuses mapped to [`ProviderError`]s with the key scrubbed, capped error bodies, and an SSE
//! reader that bounds each event and each gap between chunks.

use std::{collections::VecDeque, time::Duration};

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::{StreamExt, stream::BoxStream};
use secrecy::{ExposeSecret, SecretString};

use crate::llm::{
    provider::{EventStream, Limits, ProviderError, StreamEvent},
    scrub,
};

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
    use std::time::Duration;

    use super::*;

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
