//! OpenAI Chat Completions streaming, also spoken by Hugging Face's router and OpenAI-compatible
//! servers (Ollama, vLLM, llama.cpp): SSE `data:` chunks with `choices[0].delta.content`, a final
//! usage chunk with empty `choices` (asked for with `stream_options.include_usage`), and
//! `data: [DONE]`. Tool calls arrive as `choices[0].delta.tool_calls` pieces keyed by `index`
//! (the id and name in the first, the arguments' JSON text spread over the rest); they are
//! assembled and yielded when the turn finishes.

use std::collections::VecDeque;

use eventsource_stream::Event;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::llm::{
    provider::{
        ChatRequest, EventStream, Limits, MAX_TOOL_ARGUMENTS_BYTES, MAX_TOOL_CALLS, Message,
        Provider, ProviderError, StreamEvent, ToolCall, too_many_tool_calls,
    },
    scrub,
    wire::{SseParser, ended_early, error_message, send, sse_stream},
};

/// A provider speaking OpenAI's Chat Completions (OPENAI, HUGGINGFACE and CUSTOM keys).
pub struct OpenAiCompatible {
    http: reqwest::Client,
    base_url: String,
    secret: SecretString,
    limits: Limits,
}

impl OpenAiCompatible {
    /// A provider at `base_url` (which already ends in `/v1`, without a trailing slash), using
    /// `secret` as the bearer token; `limits` bound the wait for headers and between chunks, and the size of events and error bodies.
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

/// A message in Chat Completions form.
fn message(message: &Message) -> Value {
    match message {
        Message::User(text) => json!({"role": "user", "content": text}),
        Message::Assistant { text, tool_calls } => {
            // With tool calls and no text, `content` is null (strict servers refuse "").
            let content = if text.is_empty() && !tool_calls.is_empty() {
                Value::Null
            } else {
                json!(text)
            };
            let mut m = json!({"role": "assistant", "content": content});
            if !tool_calls.is_empty() {
                m["tool_calls"] = tool_calls
                    .iter()
                    .map(|call| {
                        // Malformed arguments go back as `{}` (the model was told of the error
                        // in the call's result); strict servers refuse them otherwise.
                        let arguments = serde_json::from_str::<Value>(&call.arguments)
                            .ok()
                            .filter(Value::is_object)
                            .map_or_else(|| "{}".to_owned(), |_| call.arguments.clone());
                        json!({
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": arguments},
                        })
                    })
                    .collect();
            }
            m
        }
        Message::ToolResult {
            call_id,
            content,
            is_error,
        } => {
            let content = if *is_error {
                format!("Error: {content}")
            } else {
                content.clone()
            };
            json!({"role": "tool", "tool_call_id": call_id, "content": content})
        }
    }
}

/// The JSON body of a streamed chat completion.
fn request_body(request: &ChatRequest) -> Value {
    let mut messages = vec![json!({"role": "system", "content": request.system})];
    messages.extend(request.messages.iter().map(message));
    let mut body = json!({
        "model": request.model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|tool| {
                json!({
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": tool.parameters,
                    },
                })
            })
            .collect();
    }
    if let Some(temperature) = request.temperature {
        body["temperature"] = json!(temperature);
    }
    if let Some(max_tokens) = request.max_output_tokens {
        body["max_tokens"] = json!(max_tokens);
    }
    body
}

#[async_trait::async_trait]
impl Provider for OpenAiCompatible {
    async fn stream(&self, request: &ChatRequest) -> Result<EventStream, ProviderError> {
        let call = self
            .http
            .post(format!(
                "{}/chat/completions",
                self.base_url.trim_end_matches('/')
            ))
            .bearer_auth(self.secret.expose_secret())
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(&request_body(request));
        let response = send(call, self.limits, &self.secret).await?;
        let parser = ChunkParser {
            secret: self.secret.clone(),
            stop_reason: None,
            usage: None,
            calls: Vec::new(),
            slots: Default::default(),
        };
        Ok(sse_stream(response, self.limits, parser))
    }
}

/// Reads Chat Completions chunks.
struct ChunkParser {
    /// Scrubbed from upstream error messages.
    secret: SecretString,
    /// The last `finish_reason` seen.
    stop_reason: Option<String>,
    /// The last usage seen (input, output), yielded just before `Finished`.
    usage: Option<(i64, i64)>,
    /// Tool calls being assembled, in order.
    calls: Vec<ToolCall>,
    /// Which of `calls` a piece's `index` currently continues.
    slots: std::collections::HashMap<usize, usize>,
}

impl ChunkParser {
    /// Adds the `delta.tool_calls` pieces of a chunk to the calls being assembled. A piece
    /// belongs to the call at its `index` (its position when a server sends none), unless it
    /// carries another call's id: some servers (Ollama) number every call 0.
    fn tool_calls(&mut self, pieces: &[Value]) -> Result<(), ProviderError> {
        for (position, piece) in pieces.iter().enumerate() {
            let index = piece
                .get("index")
                .and_then(Value::as_u64)
                .and_then(|i| usize::try_from(i).ok())
                .unwrap_or(position);
            let id = piece
                .get("id")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty());
            let continued = match (self.slots.get(&index), id) {
                (Some(&slot), Some(id)) if self.calls[slot].id != id => None,
                (slot, _) => slot.copied(),
            };
            let slot = match continued {
                Some(slot) => slot,
                None => {
                    if self.calls.len() >= MAX_TOOL_CALLS {
                        return Err(too_many_tool_calls("too many calls"));
                    }
                    let n = self.calls.len();
                    self.calls.push(ToolCall {
                        id: id.map_or_else(|| format!("call_{n}"), str::to_owned),
                        name: String::new(),
                        arguments: String::new(),
                    });
                    self.slots.insert(index, n);
                    n
                }
            };
            let call = &mut self.calls[slot];
            if let Some(name) = piece.pointer("/function/name").and_then(Value::as_str) {
                call.name.push_str(name);
            }
            if let Some(arguments) = piece.pointer("/function/arguments").and_then(Value::as_str) {
                if call.arguments.len() + arguments.len() > MAX_TOOL_ARGUMENTS_BYTES {
                    return Err(too_many_tool_calls("arguments too long"));
                }
                call.arguments.push_str(arguments);
            }
        }
        Ok(())
    }

    /// The assembled tool calls, usage (if reported), then `Finished`.
    fn finish(&mut self, out: &mut VecDeque<Result<StreamEvent, ProviderError>>) {
        self.slots.clear();
        // A piece that never named its function is no call (strict servers refuse a nameless
        // call sent back).
        for call in self.calls.drain(..).filter(|c| !c.name.is_empty()) {
            out.push_back(Ok(StreamEvent::ToolCall(call)));
        }
        if let Some((input_tokens, output_tokens)) = self.usage.take() {
            out.push_back(Ok(StreamEvent::Usage {
                input_tokens,
                output_tokens,
            }));
        }
        out.push_back(Ok(StreamEvent::Finished {
            stop_reason: self.stop_reason.take(),
        }));
    }
}

impl SseParser for ChunkParser {
    fn event(&mut self, event: Event, out: &mut VecDeque<Result<StreamEvent, ProviderError>>) {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.finish(out);
            return;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            out.push_back(Err(ProviderError::Malformed(
                "a chunk is not JSON".to_owned(),
            )));
            return;
        };
        if chunk.get("error").is_some_and(|e| !e.is_null()) {
            let message = error_message(&chunk)
                .map(|m| scrub(&m, self.secret.expose_secret()))
                .unwrap_or_else(|| "unknown error".to_owned());
            out.push_back(Err(ProviderError::Upstream(message)));
            return;
        }
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            let count = |name: &str| usage.get(name).and_then(Value::as_i64);
            if let (Some(input), Some(output)) =
                (count("prompt_tokens"), count("completion_tokens"))
            {
                self.usage = Some((input, output));
            }
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            return;
        };
        if let Some(content) = choice.pointer("/delta/content").and_then(Value::as_str)
            && !content.is_empty()
        {
            out.push_back(Ok(StreamEvent::Delta(content.to_owned())));
        }
        if let Some(pieces) = choice
            .pointer("/delta/tool_calls")
            .and_then(Value::as_array)
            && let Err(error) = self.tool_calls(pieces)
        {
            out.push_back(Err(error));
            return;
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop_reason = Some(reason.to_owned());
        }
    }

    fn end(&mut self, out: &mut VecDeque<Result<StreamEvent, ProviderError>>) {
        if self.stop_reason.is_none() {
            out.push_back(Err(ended_early()));
        } else {
            // The model finished but the server closed without `[DONE]`: accept what it said.
            self.finish(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser() -> ChunkParser {
        ChunkParser {
            secret: SecretString::from("sk-unit-test-key"),
            stop_reason: None,
            usage: None,
            calls: Vec::new(),
            slots: Default::default(),
        }
    }

    fn data(text: &str) -> Event {
        Event {
            event: "message".to_owned(),
            data: text.to_owned(),
            ..Event::default()
        }
    }

    #[test]
    fn an_end_without_done_or_finish_reason_is_malformed() {
        let mut parser = parser();
        let mut out = VecDeque::new();
        parser.event(
            data(r#"{"choices":[{"delta":{"content":"Hi"}}]}"#),
            &mut out,
        );
        assert_eq!(out.pop_front(), Some(Ok(StreamEvent::Delta("Hi".into()))));
        parser.end(&mut out);
        assert_eq!(
            Vec::from(out),
            vec![Err(ProviderError::Malformed("stream ended early".into()))]
        );
    }

    #[test]
    fn an_end_after_a_finish_reason_finishes() {
        let mut parser = parser();
        let mut out = VecDeque::new();
        parser.event(
            data(r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#),
            &mut out,
        );
        parser.event(
            data(r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#),
            &mut out,
        );
        assert!(out.is_empty());
        parser.end(&mut out);
        assert_eq!(
            Vec::from(out),
            vec![
                Ok(StreamEvent::Usage {
                    input_tokens: 3,
                    output_tokens: 2
                }),
                Ok(StreamEvent::Finished {
                    stop_reason: Some("length".into())
                })
            ]
        );
    }

    #[test]
    fn tool_call_pieces_are_assembled_by_index_and_yielded_before_finished() {
        let mut parser = parser();
        let mut out = VecDeque::new();
        for chunk in [
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"calculator","arguments":""}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"call_b","function":{"name":"wikipedia_search","arguments":"{\"query\""}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"expression\":\"2+2\"}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"function":{"arguments":":\"Rust\"}"}}]}}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#,
            "[DONE]",
        ] {
            parser.event(data(chunk), &mut out);
        }
        assert_eq!(
            Vec::from(out),
            vec![
                Ok(StreamEvent::ToolCall(ToolCall {
                    id: "call_a".into(),
                    name: "calculator".into(),
                    arguments: r#"{"expression":"2+2"}"#.into(),
                })),
                Ok(StreamEvent::ToolCall(ToolCall {
                    id: "call_b".into(),
                    name: "wikipedia_search".into(),
                    arguments: r#"{"query":"Rust"}"#.into(),
                })),
                Ok(StreamEvent::Finished {
                    stop_reason: Some("tool_calls".into())
                }),
            ]
        );
    }

    #[test]
    fn calls_that_all_say_index_zero_are_told_apart_by_their_ids_and_bounded() {
        // Ollama sends each call whole, every one with `index: 0`.
        let mut p = parser();
        let mut out = VecDeque::new();
        for chunk in [
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_x","function":{"name":"calculator","arguments":"{\"expression\":\"1+1\"}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_y","function":{"name":"calculator","arguments":"{\"expression\":\"2+2\"}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":3,"function":{"arguments":"{}"}}]},"finish_reason":"tool_calls"}]}"#,
            "[DONE]",
        ] {
            p.event(data(chunk), &mut out);
        }
        let calls: Vec<(String, String)> = out
            .iter()
            .filter_map(|e| match e {
                Ok(StreamEvent::ToolCall(c)) => Some((c.id.clone(), c.arguments.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            calls,
            [
                ("call_x".to_owned(), r#"{"expression":"1+1"}"#.to_owned()),
                ("call_y".to_owned(), r#"{"expression":"2+2"}"#.to_owned())
            ],
            "the nameless piece is no call"
        );

        let mut p = parser();
        let mut out = VecDeque::new();
        let long = "x".repeat(MAX_TOOL_ARGUMENTS_BYTES);
        p.event(
            data(&format!(
                r#"{{"choices":[{{"delta":{{"tool_calls":[{{"index":0,"id":"a","function":{{"name":"f","arguments":"{long}"}}}}]}}}}]}}"#
            )),
            &mut out,
        );
        assert!(out.is_empty());
        p.event(
            data(r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"y"}}]}}]}"#),
            &mut out,
        );
        assert!(
            matches!(out.pop_front(), Some(Err(ProviderError::Malformed(m))) if m.contains("arguments too long"))
        );
    }

    #[test]
    fn an_error_as_a_plain_string_is_upstream_and_scrubbed() {
        let mut parser = parser();
        let mut out = VecDeque::new();
        parser.event(data(r#"{"error":"bad key sk-unit-test-key"}"#), &mut out);
        assert_eq!(
            out.pop_front(),
            Some(Err(ProviderError::Upstream("bad key [redacted]".into())))
        );
    }
}
