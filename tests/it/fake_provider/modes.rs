//! The fake's failure modes, as each provider's wire format has them: error statuses, failing first requests, delays, mid-stream errors, malformed data, disconnects; and what it records.

use super::*;

#[tokio::test]
async fn status_mode_answers_with_each_providers_error_body() {
    let fake = fake().await;
    fake.set_mode(Mode::Status {
        status: 500,
        retry_after_secs: None,
    });
    let response = openai_chat(&fake, &openai_chat_body(true, true)).await;
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(
        body,
        json!({"error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "param": null,
            "code": null
        }})
    );
    let response = anthropic_messages(&fake, &anthropic_body()).await;
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"]["type"], "api_error");

    fake.set_mode(Mode::Status {
        status: 429,
        retry_after_secs: Some(7),
    });
    let response = openai_chat(&fake, &openai_chat_body(true, true)).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(
        body,
        json!({"error": {
            "message": "Rate limit reached",
            "type": "requests",
            "param": null,
            "code": "rate_limit_exceeded"
        }})
    );
    let response = anthropic_messages(&fake, &anthropic_body()).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"]["type"], "rate_limit_error");

    fake.set_mode(Mode::Status {
        status: 529,
        retry_after_secs: None,
    });
    let body: Value = anthropic_messages(&fake, &anthropic_body())
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        body,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );
}

#[tokio::test]
async fn fail_times_fails_the_first_requests_then_recovers() {
    let fake = fake().await;
    fake.set_mode(Mode::FailTimes {
        status: 503,
        times: 2,
    });
    let statuses = [
        openai_chat(&fake, &openai_chat_body(false, false))
            .await
            .status(),
        openai_chat(&fake, &openai_chat_body(false, false))
            .await
            .status(),
        openai_chat(&fake, &openai_chat_body(false, false))
            .await
            .status(),
    ];
    assert_eq!(statuses.map(|s| s.as_u16()), [503, 503, 200]);
    assert_eq!(fake.requests().len(), 3);
}

#[tokio::test]
async fn delay_mode_makes_a_short_client_timeout_fire() {
    let fake = fake().await;
    fake.set_mode(Mode::Delay(Duration::from_millis(400)));
    let error = client()
        .get(format!("{}/v1/models", fake.base_url()))
        .bearer_auth(OPENAI_KEY)
        .timeout(Duration::from_millis(100))
        .send()
        .await
        .expect_err("times out");
    assert!(error.is_timeout(), "{error}");

    fake.set_mode(Mode::Delay(Duration::from_millis(150)));
    let started = Instant::now();
    let response = client()
        .get(format!("{}/v1/models", fake.base_url()))
        .bearer_auth(OPENAI_KEY)
        .send()
        .await
        .expect("answers after the delay");
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn error_after_ends_the_stream_with_each_providers_error_event() {
    let fake = fake().await;
    fake.set_stream(StreamScript {
        error_after: Some(2),
        ..StreamScript::default()
    });
    let lines = sse_lines(openai_chat(&fake, &openai_chat_body(true, true)).await).await;
    let data = data_lines(&lines);
    assert!(!data.contains(&"[DONE]"), "{data:?}");
    let chunks: Vec<Value> = data.iter().map(|d| json_of(d)).collect();
    assert_eq!(chunks.len(), 4, "role chunk, two tokens, error: {data:?}");
    assert_eq!(chunks[2]["choices"][0]["delta"]["content"], ",");
    assert_eq!(chunks[3]["error"]["type"], "server_error");

    let events = named_events(&sse_lines(anthropic_messages(&fake, &anthropic_body()).await).await);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "error",
        ]
    );
    assert_eq!(
        json_of(&events[4].1),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );
    assert_eq!(fake.chunks_sent(), 4);
}

#[tokio::test]
async fn malformed_after_sends_a_data_line_that_is_not_json_then_ends() {
    let fake = fake().await;
    fake.set_stream(StreamScript {
        malformed_after: Some(1),
        ..StreamScript::default()
    });
    let lines = sse_lines(openai_chat(&fake, &openai_chat_body(true, true)).await).await;
    let data = data_lines(&lines);
    assert_eq!(data.len(), 3, "{data:?}");
    assert!(serde_json::from_str::<Value>(data[1]).is_ok());
    assert!(
        serde_json::from_str::<Value>(data[2]).is_err(),
        "{}",
        data[2]
    );

    let events = named_events(&sse_lines(anthropic_messages(&fake, &anthropic_body()).await).await);
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(serde_json::from_str::<Value>(&events[2].1).is_ok());
    assert!(serde_json::from_str::<Value>(&events[3].1).is_err());
}

#[tokio::test]
async fn dropping_a_hung_stream_counts_a_client_disconnect() {
    let fake = fake().await;
    fake.set_stream(StreamScript {
        hang_after: Some(2),
        ..StreamScript::default()
    });
    let response = openai_chat(&fake, &openai_chat_body(true, true)).await;
    let mut stream = response.bytes_stream();
    let mut received = String::new();
    while received.matches("\"content\":\"").count() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(1), stream.next())
            .await
            .expect("chunks before the hang")
            .expect("stream open")
            .expect("chunk");
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    // Nothing more arrives: the fake hangs.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), stream.next())
            .await
            .is_err()
    );
    assert_eq!(fake.client_disconnects(), 0);
    drop(stream);

    let deadline = Instant::now() + Duration::from_secs(1);
    while fake.client_disconnects() == 0 {
        assert!(Instant::now() < deadline, "disconnect not noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.client_disconnects(), 1);
    assert_eq!(fake.chunks_sent(), 2);
}

#[tokio::test]
async fn dropping_a_slow_stream_stops_the_sending() {
    let fake = fake().await;
    fake.set_stream(StreamScript {
        tokens: (0..100).map(|i| format!("t{i} ")).collect(),
        delay_per_token: Duration::from_millis(20),
        ..StreamScript::default()
    });
    let response = anthropic_messages(&fake, &anthropic_body()).await;
    let mut stream = response.bytes_stream();
    let mut received = String::new();
    while !received.contains("t1 ") {
        let chunk = stream.next().await.expect("open").expect("chunk");
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(1);
    while fake.client_disconnects() == 0 {
        assert!(Instant::now() < deadline, "disconnect not noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(fake.chunks_sent() < 10, "{}", fake.chunks_sent());
}

#[tokio::test]
async fn requests_are_recorded_with_lowercased_headers_and_json_bodies() {
    let fake = fake().await;
    let body = anthropic_body();
    anthropic_messages(&fake, &body).await;
    client()
        .get(format!("{}/v1/models", fake.base_url()))
        .header("X-Custom-Header", "yes")
        .send()
        .await
        .expect("GET");
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, "/v1/messages");
    assert_eq!(requests[0].body, body);
    assert_eq!(requests[0].header("X-API-Key"), Some(ANTHROPIC_KEY));
    assert_eq!(requests[1].method, "GET");
    assert_eq!(requests[1].body, Value::Null);
    assert!(
        requests[1]
            .headers
            .contains(&("x-custom-header".to_owned(), "yes".to_owned()))
    );
}
