//! The streaming provider contract: one chat turn in, a stream of deltas, usage and a finish
//! out; the failures a provider can have, safe to show; the bounds on what a provider sends; and
//! bounded retries before the first token. The wire formats implement it (`openai`, `anthropic`)
//! on the shared HTTP and SSE plumbing in `wire`; `llm::for_kind` picks one for a key.

use std::time::Duration;

use futures_util::{StreamExt, stream::BoxStream};

/// A tool the model may call: its name, what it does, and a JSON Schema of its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// The function name the model calls (`[a-z_]+`).
    pub name: &'static str,
    /// What it does, for the model.
    pub description: &'static str,
    /// JSON Schema (an object) of its arguments.
    pub parameters: serde_json::Value,
}

/// Most tool calls taken from one model turn.
pub const MAX_TOOL_CALLS: usize = 16;
/// Largest arguments of one tool call, in bytes (they are stored in the TOOL_CALL event and sent
/// back to the model with every later turn).
pub const MAX_TOOL_ARGUMENTS_BYTES: usize = 64 * 1024;

/// The error for a turn whose tool calls pass [`MAX_TOOL_CALLS`] or
/// [`MAX_TOOL_ARGUMENTS_BYTES`].
pub fn too_many_tool_calls(what: &str) -> ProviderError {
    ProviderError::Malformed(format!(
        "the model's tool calls exceed the bounds ({what}; at most {MAX_TOOL_CALLS} calls of \
         {MAX_TOOL_ARGUMENTS_BYTES} bytes of arguments per turn)"
    ))
}

/// A tool call the model made.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The provider's id of the call (a result refers to it).
    pub id: String,
    /// The function called.
    pub name: String,
    /// Its arguments as the model wrote them: JSON text, possibly malformed.
    pub arguments: String,
}

/// One message of the conversation after the system prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// The user's words.
    User(String),
    /// What the model said in an earlier step: its text and the tools it called.
    Assistant {
        /// Text of that step (may be empty).
        text: String,
        /// Its calls, in order.
        tool_calls: Vec<ToolCall>,
    },
    /// The answer to one tool call.
    ToolResult {
        /// The call answered.
        call_id: String,
        /// The result, or the error, as text.
        content: String,
        /// Whether `content` is an error.
        is_error: bool,
    },
}

/// One chat turn to stream.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The provider's model id, e.g. `gpt-4o-mini`.
    pub model: String,
    /// The system prompt.
    pub system: String,
    /// The conversation: the user's message, then the steps of a tool loop so far.
    pub messages: Vec<Message>,
    /// Tools the model may call (none: a plain completion).
    pub tools: Vec<ToolSpec>,
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
    /// A complete tool call (its arguments assembled), before `Finished`.
    ToolCall(ToolCall),
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
}
