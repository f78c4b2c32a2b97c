//! Self-tests of the fake LLM provider: it must speak the real wire formats and do what its
//! modes and stream scripts promise, or tests built on it prove nothing.

mod modes;

use crate::common;

use std::time::{Duration, Instant};

use common::fake_provider::*;
use futures_util::StreamExt;
use serde_json::{Value, json};

const OPENAI_KEY: &str = "sk-test-openai-key-1234";
const ANTHROPIC_KEY: &str = "sk-ant-test-key-5678";

/// A fake accepting both test keys.
async fn fake() -> FakeProvider {
    let fake = FakeProvider::start().await;
    fake.accept_key(OPENAI_KEY);
    fake.accept_key(ANTHROPIC_KEY);
    fake
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn openai_chat_body(stream: bool, include_usage: bool) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": stream,
        "stream_options": {"include_usage": include_usage},
    })
}

fn anthropic_body() -> Value {
    json!({
        "model": "claude-sonnet-4-20250514",
        "max_tokens": 256,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": true,
    })
}

async fn openai_chat(fake: &FakeProvider, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}/v1/chat/completions", fake.base_url()))
        .bearer_auth(OPENAI_KEY)
        .json(body)
        .send()
        .await
        .expect("POST /v1/chat/completions")
}

async fn anthropic_messages(fake: &FakeProvider, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}/v1/messages", fake.base_url()))
        .header("x-api-key", ANTHROPIC_KEY)
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .expect("POST /v1/messages")
}

/// The body's lines (without their `\n`), read incrementally from `bytes_stream`.
async fn sse_lines(response: reqwest::Response) -> Vec<String> {
    let mut stream = response.bytes_stream();
    let mut buffer = Vec::new();
    let mut lines = Vec::new();
    while let Some(chunk) = stream.next().await {
        buffer.extend_from_slice(&chunk.expect("body chunk"));
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            lines.push(String::from_utf8(line[..end].to_vec()).expect("UTF-8 line"));
        }
    }
    assert!(buffer.is_empty(), "stream ended mid-line: {buffer:?}");
    lines
}

/// The payloads of the `data:` lines.
fn data_lines(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .filter_map(|line| line.strip_prefix("data: "))
        .collect()
}

/// `(event name, data)` of each named SSE event.
fn named_events(lines: &[String]) -> Vec<(String, String)> {
    let mut events = Vec::new();
    let mut name = None;
    for line in lines {
        if let Some(n) = line.strip_prefix("event: ") {
            name = Some(n.to_owned());
        } else if let Some(data) = line.strip_prefix("data: ") {
            events.push((name.take().expect("event: before data:"), data.to_owned()));
        }
    }
    events
}

fn json_of(data: &str) -> Value {
    serde_json::from_str(data).unwrap_or_else(|e| panic!("not JSON ({e}): {data}"))
}

#[tokio::test]
async fn openai_models_listing_has_the_real_shape() {
    let fake = fake().await;
    let response = client()
        .get(format!("{}/v1/models", fake.base_url()))
        .bearer_auth(OPENAI_KEY)
        .send()
        .await
        .expect("GET /v1/models");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["id"], "gpt-4o-mini");
    assert_eq!(body["data"][0]["object"], "model");
    assert_eq!(body["data"][0]["created"], 1721172741);
    assert_eq!(body["data"][0]["owned_by"], "system");
    assert_eq!(body["data"][1]["id"], "gpt-4o");
}

#[tokio::test]
async fn anthropic_models_listing_is_chosen_by_the_x_api_key_header() {
    let fake = fake().await;
    let response = client()
        .get(format!("{}/v1/models", fake.base_url()))
        .header("x-api-key", ANTHROPIC_KEY)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .expect("GET /v1/models");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(
        body,
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
        })
    );
}

#[tokio::test]
async fn a_wrong_openai_key_gets_the_real_401_body_with_the_key_masked() {
    let fake = fake().await;
    let response = client()
        .get(format!("{}/v1/models", fake.base_url()))
        .bearer_auth("sk-wrong-key-abcd")
        .send()
        .await
        .expect("GET /v1/models");
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(
        body,
        json!({"error": {
            "message": "Incorrect API key provided: sk-***abcd. You can find your API key at https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error",
            "param": null,
            "code": "invalid_api_key"
        }})
    );

    let missing = client()
        .post(format!("{}/v1/chat/completions", fake.base_url()))
        .json(&openai_chat_body(true, true))
        .send()
        .await
        .expect("POST without key");
    assert_eq!(missing.status(), 401);
    let body: Value = missing.json().await.expect("JSON");
    assert_eq!(body["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn a_wrong_anthropic_key_gets_the_real_401_body() {
    let fake = fake().await;
    let response = client()
        .post(format!("{}/v1/messages", fake.base_url()))
        .header("x-api-key", "sk-ant-wrong")
        .header("anthropic-version", "2023-06-01")
        .json(&anthropic_body())
        .send()
        .await
        .expect("POST /v1/messages");
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(
        body,
        json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})
    );
}

#[tokio::test]
async fn an_anthropic_request_without_a_version_header_is_rejected_with_400() {
    let fake = fake().await;
    let response = client()
        .post(format!("{}/v1/messages", fake.base_url()))
        .header("x-api-key", ANTHROPIC_KEY)
        .json(&anthropic_body())
        .send()
        .await
        .expect("POST /v1/messages");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn openai_stream_sends_every_token_then_usage_then_done() {
    let fake = fake().await;
    let response = openai_chat(&fake, &openai_chat_body(true, true)).await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().expect("ASCII");
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let lines = sse_lines(response).await;
    // Every event is a single `data:` line followed by a blank line.
    for pair in lines.chunks(2) {
        assert!(pair[0].starts_with("data: "), "{pair:?}");
        assert_eq!(pair[1], "", "{pair:?}");
    }
    let data = data_lines(&lines);
    assert_eq!(data.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| json_of(d)).collect();

    let first = &chunks[0];
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["model"], "gpt-4o-mini");
    assert!(first["id"].as_str().expect("id").starts_with("chatcmpl-"));
    assert_eq!(
        first["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(first["choices"][0]["finish_reason"], Value::Null);

    let tokens: Vec<&str> = chunks[1..5]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().expect("token"))
        .collect();
    assert_eq!(tokens, ["Hello", ",", " world", "!"]);

    assert_eq!(chunks[5]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[6]["choices"], json!([]));
    assert_eq!(
        chunks[6]["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16})
    );
    assert_eq!(chunks.len(), 7);
    assert_eq!(fake.chunks_sent(), 4);
    assert_eq!(fake.client_disconnects(), 0);
}

#[tokio::test]
async fn openai_stream_omits_usage_unless_asked_and_interleaves_keep_alives() {
    let fake = fake().await;
    fake.set_stream(StreamScript {
        pings: true,
        ..StreamScript::default()
    });
    let lines = sse_lines(openai_chat(&fake, &openai_chat_body(true, false)).await).await;
    assert_eq!(
        lines.iter().filter(|l| *l == ": keep-alive").count(),
        4,
        "{lines:?}"
    );
    let data = data_lines(&lines);
    assert_eq!(data.last(), Some(&"[DONE]"));
    assert!(
        data.iter().all(|d| !d.contains("\"usage\"")),
        "usage without include_usage: {data:?}"
    );

    // Asked for, but the script withholds it.
    fake.set_stream(StreamScript {
        report_usage: false,
        ..StreamScript::default()
    });
    let lines = sse_lines(openai_chat(&fake, &openai_chat_body(true, true)).await).await;
    let data = data_lines(&lines);
    assert!(data.iter().all(|d| !d.contains("\"prompt_tokens\"")));
}

#[tokio::test]
async fn openai_non_streamed_completion_joins_the_tokens() {
    let fake = fake().await;
    let response = openai_chat(&fake, &openai_chat_body(false, false)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello, world!");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["total_tokens"], 16);
}

#[tokio::test]
async fn anthropic_stream_sends_the_named_events_in_order() {
    let fake = fake().await;
    let response = anthropic_messages(&fake, &anthropic_body()).await;
    assert_eq!(response.status(), 200);
    let events = named_events(&sse_lines(response).await);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    let data: Vec<Value> = events.iter().map(|(_, d)| json_of(d)).collect();
    for ((name, _), value) in events.iter().zip(&data) {
        assert_eq!(&value["type"], name.as_str());
    }
    let message = &data[0]["message"];
    assert!(message["id"].as_str().expect("id").starts_with("msg_"));
    assert_eq!(message["model"], "claude-sonnet-4-20250514");
    assert_eq!(message["content"], json!([]));
    assert_eq!(
        message["usage"],
        json!({"input_tokens": 12, "output_tokens": 1})
    );
    assert_eq!(
        data[1]["content_block"],
        json!({"type": "text", "text": ""})
    );
    let text: String = data[2..6]
        .iter()
        .map(|d| {
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().expect("text")
        })
        .collect();
    assert_eq!(text, "Hello, world!");
    assert_eq!(data[6], json!({"type": "content_block_stop", "index": 0}));
    assert_eq!(
        data[7],
        json!({
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": 4}
        })
    );
    assert_eq!(fake.chunks_sent(), 4);
}

#[tokio::test]
async fn anthropic_stream_interleaves_pings_when_enabled() {
    let fake = fake().await;
    fake.set_stream(StreamScript {
        pings: true,
        report_usage: false,
        ..StreamScript::default()
    });
    let events = named_events(&sse_lines(anthropic_messages(&fake, &anthropic_body()).await).await);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "ping",
            "content_block_delta",
            "ping",
            "content_block_delta",
            "ping",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    assert_eq!(json_of(&events[2].1), json!({"type": "ping"}));
    let message_delta = json_of(&events[11].1);
    assert!(message_delta.get("usage").is_none(), "{message_delta}");
}
