//! The streaming provider layer against the fake provider: both wire formats, the request
//! bodies, status mapping, retries, timeouts, mid-stream failures and disconnects.

mod broken_streams;
mod retries;

use crate::common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use agentry::llm::{ProviderKind, for_kind, provider::*};
use common::fake_provider::{FakeProvider, Mode, StreamScript};
use futures_util::StreamExt;
use secrecy::SecretString;
use serde_json::json;

const OPENAI_KEY: &str = "sk-test-openai-key-1234";
const ANTHROPIC_KEY: &str = "sk-ant-test-key-5678";

/// Timeout for calls that are expected to go through.
const GENEROUS: Duration = Duration::from_secs(5);

/// A fake accepting both test keys.
async fn fake() -> FakeProvider {
    let fake = FakeProvider::start().await;
    fake.accept_key(OPENAI_KEY);
    fake.accept_key(ANTHROPIC_KEY);
    fake
}

/// The provider for `kind` pointed at `fake` with the key it accepts.
fn provider(fake: &FakeProvider, kind: ProviderKind, timeout: Duration) -> Box<dyn Provider> {
    let key = if kind == ProviderKind::Anthropic {
        ANTHROPIC_KEY
    } else {
        OPENAI_KEY
    };
    provider_with_key(fake, kind, key, timeout)
}

fn provider_with_key(
    fake: &FakeProvider,
    kind: ProviderKind,
    key: &str,
    timeout: Duration,
) -> Box<dyn Provider> {
    let base_url = if kind.is_openai_compatible() {
        format!("{}/v1", fake.base_url())
    } else {
        fake.base_url()
    };
    for_kind(
        kind,
        reqwest::Client::new(),
        base_url,
        SecretString::from(key),
        timeout,
    )
    .expect("an LLM provider")
}

fn request(kind: ProviderKind) -> ChatRequest {
    ChatRequest {
        model: if kind == ProviderKind::Anthropic {
            "claude-sonnet-4-20250514".into()
        } else {
            "gpt-4o-mini".into()
        },
        system: "Be brief.".into(),
        messages: vec![agentry::llm::provider::Message::User("Say hello".into())],
        tools: Vec::new(),
        temperature: None,
        max_output_tokens: None,
    }
}

/// Every item of `stream` (bounded to 3 s, so a stream that never ends fails the test).
async fn collect(stream: EventStream) -> Vec<Result<StreamEvent, ProviderError>> {
    tokio::time::timeout(Duration::from_secs(3), stream.collect::<Vec<_>>())
        .await
        .expect("the stream ends")
}

fn deltas(tokens: &[&str]) -> Vec<Result<StreamEvent, ProviderError>> {
    tokens
        .iter()
        .map(|t| Ok(StreamEvent::Delta((*t).to_owned())))
        .collect()
}

/// What the default script yields, finishing with `stop_reason`.
fn default_events(stop_reason: &str) -> Vec<Result<StreamEvent, ProviderError>> {
    let mut events = deltas(&["Hello", ",", " world", "!"]);
    events.push(Ok(StreamEvent::Usage {
        input_tokens: 12,
        output_tokens: 4,
    }));
    events.push(Ok(StreamEvent::Finished {
        stop_reason: Some(stop_reason.into()),
    }));
    events
}

/// The error a stream opening gives (panics if it opens).
async fn open_error(provider: &dyn Provider, kind: ProviderKind) -> ProviderError {
    match provider.stream(&request(kind)).await {
        Ok(_) => panic!("the stream opened"),
        Err(error) => error,
    }
}

#[tokio::test]
async fn openai_stream_gives_every_token_in_order_then_usage_then_finished() {
    let fake = fake().await;
    fake.set_stream(StreamScript {
        pings: true,
        ..StreamScript::default()
    });
    let provider = provider(&fake, ProviderKind::OpenAi, GENEROUS);
    let stream = provider
        .stream(&request(ProviderKind::OpenAi))
        .await
        .unwrap();
    assert_eq!(collect(stream).await, default_events("stop"));
}

#[tokio::test]
async fn anthropic_stream_with_pings_gives_every_token_in_order_then_usage_then_finished() {
    let fake = fake().await;
    fake.set_stream(StreamScript {
        pings: true,
        ..StreamScript::default()
    });
    let provider = provider(&fake, ProviderKind::Anthropic, GENEROUS);
    let stream = provider
        .stream(&request(ProviderKind::Anthropic))
        .await
        .unwrap();
    assert_eq!(collect(stream).await, default_events("end_turn"));
}

#[tokio::test]
async fn hugging_face_and_custom_keys_speak_the_openai_format() {
    let fake = fake().await;
    for kind in [ProviderKind::HuggingFace, ProviderKind::Custom] {
        let provider = provider(&fake, kind, GENEROUS);
        let stream = provider.stream(&request(kind)).await.unwrap();
        assert_eq!(collect(stream).await, default_events("stop"), "{kind:?}");
    }
    assert!(
        fake.requests()
            .iter()
            .all(|r| r.path == "/v1/chat/completions")
    );
}

#[tokio::test]
async fn a_stream_without_reported_usage_has_no_usage_event() {
    let fake = fake().await;
    fake.set_stream(StreamScript {
        report_usage: false,
        ..StreamScript::default()
    });
    for (kind, stop_reason) in [
        (ProviderKind::OpenAi, "stop"),
        (ProviderKind::Anthropic, "end_turn"),
    ] {
        let provider = provider(&fake, kind, GENEROUS);
        let stream = provider.stream(&request(kind)).await.unwrap();
        let mut expected = deltas(&["Hello", ",", " world", "!"]);
        expected.push(Ok(StreamEvent::Finished {
            stop_reason: Some(stop_reason.into()),
        }));
        assert_eq!(collect(stream).await, expected, "{kind:?}");
    }
}

#[tokio::test]
async fn the_openai_request_body_has_the_documented_fields() {
    let fake = fake().await;
    let provider = provider(&fake, ProviderKind::OpenAi, GENEROUS);
    let request = ChatRequest {
        temperature: Some(0.5),
        max_output_tokens: Some(77),
        ..request(ProviderKind::OpenAi)
    };
    collect(provider.stream(&request).await.unwrap()).await;

    let recorded = fake.requests();
    assert_eq!(recorded.len(), 1);
    let sent = &recorded[0];
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );
    assert_eq!(
        sent.body,
        json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Say hello"},
            ],
            "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": 0.5,
            "max_tokens": 77,
        })
    );

    // Unset options are left out.
    collect(
        provider
            .stream(&self::request(ProviderKind::OpenAi))
            .await
            .unwrap(),
    )
    .await;
    let body = &fake.requests()[1].body;
    assert!(body.get("temperature").is_none() && body.get("max_tokens").is_none());
}

#[tokio::test]
async fn the_anthropic_request_has_max_tokens_system_and_the_version_header() {
    let fake = fake().await;
    let provider = provider(&fake, ProviderKind::Anthropic, GENEROUS);
    let request = ChatRequest {
        temperature: Some(0.25),
        max_output_tokens: Some(300),
        ..request(ProviderKind::Anthropic)
    };
    collect(provider.stream(&request).await.unwrap()).await;
    collect(
        provider
            .stream(&self::request(ProviderKind::Anthropic))
            .await
            .unwrap(),
    )
    .await;

    let recorded = fake.requests();
    assert_eq!(recorded.len(), 2);
    let sent = &recorded[0];
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some(ANTHROPIC_KEY));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(sent.header("content-type"), Some("application/json"));
    assert_eq!(sent.header("authorization"), None);
    assert_eq!(
        sent.body,
        json!({
            "model": "claude-sonnet-4-20250514",
            "max_tokens": 300,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": "Say hello"}],
            "stream": true,
            "temperature": 0.25,
        })
    );
    // Anthropic requires max_tokens: a default is sent when the request sets none.
    assert_eq!(recorded[1].body["max_tokens"], json!(1024));
    assert!(recorded[1].body.get("temperature").is_none());
}

#[tokio::test]
async fn a_401_maps_to_rejected_and_the_message_does_not_contain_the_key() {
    let fake = fake().await;
    for (kind, key) in [
        (ProviderKind::OpenAi, "sk-wrong-openai-key-987654321"),
        (ProviderKind::Anthropic, "sk-ant-wrong-key-987654321"),
    ] {
        let provider = provider_with_key(&fake, kind, key, GENEROUS);
        let error = open_error(provider.as_ref(), kind).await;
        let ProviderError::Rejected(message) = &error else {
            panic!("{kind:?}: {error:?}");
        };
        assert!(message.contains("401"), "{message}");
        assert!(!error.to_string().contains(key), "{error}");
        assert!(!error.is_retryable());
    }
}

#[tokio::test]
async fn a_429_with_retry_after_maps_to_rate_limited_with_that_duration() {
    let fake = fake().await;
    fake.set_mode(Mode::Status {
        status: 429,
        retry_after_secs: Some(7),
    });
    for kind in [ProviderKind::OpenAi, ProviderKind::Anthropic] {
        let provider = provider(&fake, kind, GENEROUS);
        let error = open_error(provider.as_ref(), kind).await;
        assert!(
            matches!(
                &error,
                ProviderError::RateLimited { retry_after: Some(wait), .. }
                    if *wait == Duration::from_secs(7)
            ),
            "{kind:?}: {error:?}"
        );
        assert!(error.is_retryable());
    }
}

#[tokio::test]
async fn other_statuses_map_to_unavailable_and_bad_request() {
    let fake = fake().await;
    let cases = [
        (ProviderKind::OpenAi, 500, "Unavailable"),
        (ProviderKind::OpenAi, 503, "Unavailable"),
        (ProviderKind::OpenAi, 404, "BadRequest"),
        (ProviderKind::Anthropic, 529, "Unavailable"),
        (ProviderKind::Anthropic, 400, "BadRequest"),
    ];
    for (kind, status, expected) in cases {
        fake.set_mode(Mode::Status {
            status,
            retry_after_secs: None,
        });
        let provider = provider(&fake, kind, GENEROUS);
        let error = open_error(provider.as_ref(), kind).await;
        let matched = match &error {
            ProviderError::Unavailable(m) => {
                expected == "Unavailable" && m.contains(&status.to_string())
            }
            ProviderError::BadRequest(m) => {
                expected == "BadRequest" && m.contains(&status.to_string())
            }
            _ => false,
        };
        assert!(matched, "{kind:?} {status}: {error:?}");
    }
}

/// A local server answering every request with `respond` (a misbehaving provider's bytes).
pub(crate) async fn raw_provider(respond: fn() -> axum::response::Response) -> String {
    let app = axum::Router::new().fallback(move || async move { respond() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1")
}

/// An endless body: `first`, then the same chunk forever.
pub(crate) fn endless(first: &'static str, chunk: &'static str) -> axum::body::Body {
    let rest = futures_util::stream::repeat_with(move || {
        Ok::<_, std::convert::Infallible>(axum::body::Bytes::from_static(chunk.as_bytes()))
    });
    axum::body::Body::from_stream(
        futures_util::stream::once(async move {
            Ok::<_, std::convert::Infallible>(axum::body::Bytes::from_static(first.as_bytes()))
        })
        .chain(rest),
    )
}
