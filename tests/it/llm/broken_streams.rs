//! Streams that go wrong midway: hangs, errors, malformed chunks, disconnects, oversized events and endless error bodies.

use super::*;

#[tokio::test]
async fn a_delay_longer_than_the_timeout_gives_timeout() {
    let fake = fake().await;
    fake.set_mode(Mode::Delay(Duration::from_secs(2)));
    let provider = provider(&fake, ProviderKind::OpenAi, Duration::from_millis(200));
    let started = Instant::now();
    let error = open_error(provider.as_ref(), ProviderKind::OpenAi).await;
    assert_eq!(error, ProviderError::Timeout(1));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn a_stream_that_hangs_midway_yields_the_first_tokens_then_timeout() {
    let fake = fake().await;
    fake.set_stream(StreamScript {
        hang_after: Some(2),
        ..StreamScript::default()
    });
    for kind in [ProviderKind::OpenAi, ProviderKind::Anthropic] {
        let provider = provider(&fake, kind, Duration::from_millis(300));
        let started = Instant::now();
        let stream = provider.stream(&request(kind)).await.unwrap();
        let mut expected = deltas(&["Hello", ","]);
        expected.push(Err(ProviderError::Timeout(1)));
        assert_eq!(collect(stream).await, expected, "{kind:?}");
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
}

#[tokio::test]
async fn an_error_mid_stream_gives_upstream_after_the_first_tokens() {
    let fake = fake().await;
    fake.set_stream(StreamScript {
        error_after: Some(2),
        ..StreamScript::default()
    });
    for (kind, message) in [
        (
            ProviderKind::OpenAi,
            "The server had an error while processing your request.",
        ),
        (ProviderKind::Anthropic, "overloaded_error: Overloaded"),
    ] {
        let provider = provider(&fake, kind, GENEROUS);
        let stream = provider.stream(&request(kind)).await.unwrap();
        let mut expected = deltas(&["Hello", ","]);
        expected.push(Err(ProviderError::Upstream(message.into())));
        assert_eq!(collect(stream).await, expected, "{kind:?}");
    }
}

#[tokio::test]
async fn a_malformed_chunk_gives_malformed_after_the_first_tokens() {
    let fake = fake().await;
    fake.set_stream(StreamScript {
        malformed_after: Some(3),
        ..StreamScript::default()
    });
    for kind in [ProviderKind::OpenAi, ProviderKind::Anthropic] {
        let provider = provider(&fake, kind, GENEROUS);
        let stream = provider.stream(&request(kind)).await.unwrap();
        let events = collect(stream).await;
        assert_eq!(events[..3], deltas(&["Hello", ",", " world"]), "{kind:?}");
        assert!(
            matches!(events[3..], [Err(ProviderError::Malformed(_))]),
            "{kind:?}: {events:?}"
        );
    }
}

#[tokio::test]
async fn dropping_the_stream_midway_makes_the_provider_see_a_disconnect() {
    let fake = fake().await;
    fake.set_stream(StreamScript {
        tokens: (0..100).map(|i| format!("t{i} ")).collect(),
        delay_per_token: Duration::from_millis(20),
        ..StreamScript::default()
    });
    for (round, kind) in [ProviderKind::OpenAi, ProviderKind::Anthropic]
        .into_iter()
        .enumerate()
    {
        let provider = provider(&fake, kind, GENEROUS);
        let mut stream = provider.stream(&request(kind)).await.unwrap();
        assert_eq!(
            stream.next().await,
            Some(Ok(StreamEvent::Delta("t0 ".into())))
        );
        drop(stream);
        let deadline = Instant::now() + Duration::from_secs(2);
        while fake.client_disconnects() <= round {
            assert!(
                Instant::now() < deadline,
                "{kind:?}: disconnect not noticed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert!(fake.chunks_sent() < 20, "{}", fake.chunks_sent());
}

/// An OpenAI-format provider at `base_url` with event and error-body caps of 1 KiB.
fn capped_provider(base_url: String) -> Box<dyn Provider> {
    for_kind(
        ProviderKind::Custom,
        reqwest::Client::new(),
        base_url,
        SecretString::from(OPENAI_KEY),
        Limits {
            timeout: Duration::from_secs(30),
            max_event_bytes: 1024,
            max_error_bytes: 1024,
        },
    )
    .expect("an LLM provider")
}

#[tokio::test]
async fn an_event_over_the_size_cap_ends_the_stream_as_malformed_after_the_tokens_before_it() {
    // One good chunk, then a `data:` line that never ends: without the cap the SSE parser
    // would buffer it forever.
    let base = raw_provider(|| {
        axum::response::Response::builder()
            .header("content-type", "text/event-stream")
            .body(endless(
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"",
                "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            ))
            .unwrap()
    })
    .await;
    let provider = capped_provider(base);
    let stream = provider
        .stream(&request(ProviderKind::OpenAi))
        .await
        .unwrap();
    let events = collect(stream).await;
    assert_eq!(events[..1], deltas(&["Hi"]));
    match &events[1..] {
        [Err(ProviderError::Malformed(message))] => {
            assert!(message.contains("1024 bytes"), "{message}");
            assert!(message.contains("AGENTRY_SSE_MAX_EVENT_BYTES"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_endless_error_body_is_read_only_up_to_its_cap() {
    let base = raw_provider(|| {
        axum::response::Response::builder()
            .status(500)
            .header("content-type", "application/json")
            .body(endless("{\"error\":{\"message\":\"", "overloaded "))
            .unwrap()
    })
    .await;
    let provider = capped_provider(base);
    // The timeout is 30 s: an uncapped read would wait for it; the collect guard is 3 s.
    let error = tokio::time::timeout(
        Duration::from_secs(3),
        provider.stream(&request(ProviderKind::OpenAi)),
    )
    .await
    .expect("the error arrives without reading the whole body");
    match error {
        Err(ProviderError::Unavailable(message)) => assert!(message.len() <= 1100, "{message}"),
        other => panic!("{:?}", other.err()),
    }
}
