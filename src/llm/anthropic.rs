//! Anthropic Messages streaming: named SSE events `message_start` (input tokens),
//! `content_block_delta` (`text_delta`), `message_delta` (output tokens, `stop_reason`),
//! `message_stop`, with `ping` at any time and `error` mid-stream. A tool call is a `tool_use`
//! content block: `content_block_start` names it, `input_json_delta`s carry its input's JSON
//! text, and `content_block_stop` completes it.

use std::collections::VecDeque;

use eventsource_stream::Event;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::llm::{
    ANTHROPIC_VERSION,
    provider::{
        ChatRequest, EventStream, Limits, MAX_TOOL_ARGUMENTS_BYTES, MAX_TOOL_CALLS, Message,
        Provider, ProviderError, StreamEvent, ToolCall, too_many_tool_calls,
    },
    scrub,
    wire::{SseParser, ended_early, send, sse_stream},
};

/// `max_tokens` sent when the request sets none (Anthropic requires a value).
const DEFAULT_MAX_TOKENS: u32 = 1024;

/// A provider speaking Anthropic's Messages API (ANTHROPIC keys).
pub struct Anthropic {
    http: reqwest::Client,
    base_url: String,
    secret: SecretString,
    limits: Limits,
}

impl Anthropic {
    /// A provider at `base_url` (without `/v1` and without a trailing slash), sending `secret` as
    /// `x-api-key`; `limits` bound the wait for headers and between chunks, and the size of events and error bodies.
    pub fn new(
        http: reqwest::Client,
        base_url: String,
        secret: SecretString,
        limits: Limits,
    ) -> Self {
        Self {
            http,
            base_url,
            secret,
            limits,
        }
    }
}

/// The conversation in Messages form: tool results go back as `tool_result` blocks of a user
/// message (consecutive results share one), and a call's input must be a JSON object (a
/// malformed one is sent as `{}`; the model was told of the error in its result).
fn messages(request: &ChatRequest) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for message in &request.messages {
        match message {
            Message::User(text) => out.push(json!({"role": "user", "content": text})),
            Message::Assistant { text, tool_calls } => {
                let mut content = Vec::new();
                // Anthropic refuses text blocks of whitespace only.
                if !text.trim().is_empty() {
                    content.push(json!({"type": "text", "text": text}));
                }
                for call in tool_calls {
                    let input = serde_json::from_str::<Value>(&call.arguments)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({}));
                    content.push(json!({
                        "type": "tool_use", "id": call.id, "name": call.name, "input": input,
                    }));
                }
                out.push(json!({"role": "assistant", "content": content}));
            }
            Message::ToolResult {
                call_id,
                content,
                is_error,
            } => {
                let block = json!({
                    "type": "tool_result", "tool_use_id": call_id, "content": content,
                    "is_error": is_error,
                });
                match out.last_mut() {
                    Some(last)
                        if last["role"] == "user"
                            && last["content"][0]["type"] == "tool_result" =>
                    {
                        if let Some(blocks) = last["content"].as_array_mut() {
                            blocks.push(block);
                        }
                    }
                    _ => out.push(json!({"role": "user", "content": [block]})),
                }
            }
        }
    }
    out
}

/// The JSON body of a streamed message.
fn request_body(request: &ChatRequest) -> Value {
    let mut body = json!({
        "model": request.model,
        "max_tokens": request.max_output_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "system": request.system,
        "messages": messages(request),
        "stream": true,
    });
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|tool| {
                json!({
                    "name": tool.name,
                    "description": tool.description,
                    "input_schema": tool.parameters,
                })
            })
            .collect();
    }
    if let Some(temperature) = request.temperature {
        body["temperature"] = json!(temperature);
    }
    body
}

#[async_trait::async_trait]
impl Provider for Anthropic {
    async fn stream(&self, request: &ChatRequest) -> Result<EventStream, ProviderError> {
        let call = self
            .http
            .post(format!(
                "{}/v1/messages",
                self.base_url.trim_end_matches('/')
            ))
            .header("x-api-key", self.secret.expose_secret())
            .header("anthropic-version", ANTHROPIC_VERSION)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(&request_body(request));
        let response = send(call, self.limits, &self.secret).await?;
        let parser = EventParser {
            secret: self.secret.clone(),
            input_tokens: None,
            output_tokens: None,
            stop_reason: None,
            calls: Vec::new(),
            started: 0,
        };
        Ok(sse_stream(response, self.limits, parser))
    }
}

/// Reads Messages stream events.
struct EventParser {
    /// Scrubbed from upstream error messages.
    secret: SecretString,
    /// From `message_start` (or a later `message_delta` that carries it).
    input_tokens: Option<i64>,
    /// From `message_delta` (cumulative).
    output_tokens: Option<i64>,
    /// From `message_delta`.
    stop_reason: Option<String>,
    /// `tool_use` blocks being assembled: (block index, the call so far).
    calls: Vec<(u64, ToolCall)>,
    /// `tool_use` blocks started in this turn (bounded by [`MAX_TOOL_CALLS`]).
    started: usize,
}

impl EventParser {
    /// `error.type: error.message` of an `error` event, scrubbed.
    fn upstream(&self, data: &Value) -> ProviderError {
        let field = |name: &str| {
            data.pointer(&format!("/error/{name}"))
                .and_then(Value::as_str)
        };
        let text = match (field("type"), field("message")) {
            (Some(kind), Some(message)) => format!("{kind}: {message}"),
            (Some(only), None) | (None, Some(only)) => only.to_owned(),
            (None, None) => "unknown error".to_owned(),
        };
        ProviderError::Upstream(scrub(&text, self.secret.expose_secret()))
    }
}

impl SseParser for EventParser {
    fn event(&mut self, event: Event, out: &mut VecDeque<Result<StreamEvent, ProviderError>>) {
        const KNOWN: [&str; 7] = [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
            "error",
        ];
        // Events are named; a nameless one says what it is in its `type`.
        let named = event.event != "message";
        if named && !KNOWN.contains(&event.event.as_str()) {
            return; // ping, and event types added later
        }
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
            out.push_back(Err(ProviderError::Malformed(format!(
                "a {} event is not JSON",
                if named {
                    event.event.as_str()
                } else {
                    "nameless"
                }
            ))));
            return;
        };
        let kind = if named {
            event.event.as_str()
        } else {
            data.get("type").and_then(Value::as_str).unwrap_or_default()
        };
        match kind {
            "message_start" => {
                if let Some(input) = data
                    .pointer("/message/usage/input_tokens")
                    .and_then(Value::as_i64)
                {
                    self.input_tokens = Some(input);
                }
            }
            "content_block_start" => {
                let block = &data["content_block"];
                if block["type"] == "tool_use" {
                    self.started += 1;
                    if self.started > MAX_TOOL_CALLS {
                        out.push_back(Err(too_many_tool_calls("too many calls")));
                        return;
                    }
                    let index = data["index"].as_u64().unwrap_or_default();
                    let text = |name: &str| block[name].as_str().unwrap_or_default().to_owned();
                    self.calls.push((
                        index,
                        ToolCall {
                            id: text("id"),
                            name: text("name"),
                            arguments: String::new(),
                        },
                    ));
                }
            }
            "content_block_delta" => {
                let delta = &data["delta"];
                if delta["type"] == "text_delta"
                    && let Some(text) = delta["text"].as_str()
                    && !text.is_empty()
                {
                    out.push_back(Ok(StreamEvent::Delta(text.to_owned())));
                } else if delta["type"] == "input_json_delta"
                    && let Some(json) = delta["partial_json"].as_str()
                    && let Some((_, call)) = self
                        .calls
                        .iter_mut()
                        .find(|(i, _)| Some(*i) == data["index"].as_u64())
                {
                    if call.arguments.len() + json.len() > MAX_TOOL_ARGUMENTS_BYTES {
                        out.push_back(Err(too_many_tool_calls("arguments too long")));
                        return;
                    }
                    call.arguments.push_str(json);
                }
            }
            "content_block_stop" => {
                let index = data["index"].as_u64();
                if let Some(at) = self.calls.iter().position(|(i, _)| Some(*i) == index) {
                    let (_, mut call) = self.calls.remove(at);
                    if call.arguments.trim().is_empty() {
                        "{}".clone_into(&mut call.arguments); // a call without input
                    }
                    out.push_back(Ok(StreamEvent::ToolCall(call)));
                }
            }
            "message_delta" => {
                if let Some(reason) = data.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.stop_reason = Some(reason.to_owned());
                }
                let usage = &data["usage"];
                if let Some(output) = usage["output_tokens"].as_i64() {
                    self.output_tokens = Some(output);
                }
                if let Some(input) = usage["input_tokens"].as_i64() {
                    self.input_tokens = Some(input);
                }
            }
            "message_stop" => {
                if let Some(output_tokens) = self.output_tokens {
                    out.push_back(Ok(StreamEvent::Usage {
                        input_tokens: self.input_tokens.unwrap_or(0),
                        output_tokens,
                    }));
                }
                out.push_back(Ok(StreamEvent::Finished {
                    stop_reason: self.stop_reason.take(),
                }));
            }
            "error" => out.push_back(Err(self.upstream(&data))),
            _ => {}
        }
    }

    fn end(&mut self, out: &mut VecDeque<Result<StreamEvent, ProviderError>>) {
        out.push_back(Err(ended_early()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser() -> EventParser {
        EventParser {
            secret: SecretString::from("sk-ant-unit-test"),
            input_tokens: None,
            output_tokens: None,
            stop_reason: None,
            calls: Vec::new(),
            started: 0,
        }
    }

    fn event(name: &str, data: &str) -> Event {
        Event {
            event: name.to_owned(),
            data: data.to_owned(),
            ..Event::default()
        }
    }

    #[test]
    fn unknown_events_are_ignored_and_an_end_without_message_stop_is_malformed() {
        let mut parser = parser();
        let mut out = VecDeque::new();
        parser.event(event("brand_new_event", "not even json"), &mut out);
        parser.event(event("ping", r#"{"type": "ping"}"#), &mut out);
        assert!(out.is_empty());
        parser.end(&mut out);
        assert_eq!(Vec::from(out), vec![Err(ended_early())]);
    }

    #[test]
    fn a_tool_use_block_is_assembled_from_its_input_json_deltas() {
        let mut parser = parser();
        let mut out = VecDeque::new();
        for (name, data) in [
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Let me check."}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"calculator","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"expression\": "}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"6*7\"}"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":1}"#,
            ),
        ] {
            parser.event(event(name, data), &mut out);
        }
        assert_eq!(
            Vec::from(out),
            vec![
                Ok(StreamEvent::Delta("Let me check.".into())),
                Ok(StreamEvent::ToolCall(ToolCall {
                    id: "toolu_1".into(),
                    name: "calculator".into(),
                    arguments: r#"{"expression": "6*7"}"#.into(),
                })),
            ]
        );
    }

    #[test]
    fn without_reported_output_tokens_no_usage_is_yielded() {
        let mut parser = parser();
        let mut out = VecDeque::new();
        parser.event(
            event(
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"}}"#,
            ),
            &mut out,
        );
        parser.event(
            event("message_stop", r#"{"type":"message_stop"}"#),
            &mut out,
        );
        assert_eq!(
            Vec::from(out),
            vec![Ok(StreamEvent::Finished {
                stop_reason: Some("max_tokens".into())
            })]
        );
    }
}
