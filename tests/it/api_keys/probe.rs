//! `testApiKey`: each provider called the documented way, a rejected key, an unreachable provider.

use super::*;

#[tokio::test]
async fn test_api_key_calls_each_provider_the_documented_way() {
    let (app, fake) = app_with_fake().await;
    let user = app.register("probe@example.com").await;
    for key in [OPENAI_KEY, ANTHROPIC_KEY, HF_TOKEN, "custom-server-token"] {
        fake.accept_key(key);
    }
    let endpoint = format!("{}/v1", fake.base_url());
    let inputs = [
        json!({"name": "o", "provider": "OPENAI", "secret": OPENAI_KEY}),
        json!({"name": "a", "provider": "ANTHROPIC", "secret": ANTHROPIC_KEY}),
        json!({"name": "h", "provider": "HUGGINGFACE", "secret": HF_TOKEN}),
        json!({"name": "c", "provider": "CUSTOM", "secret": "custom-server-token", "endpoint": endpoint}),
    ];
    for input in inputs {
        let created = create(&app, &user.access, input.clone()).await;
        let id = id_at(&created, &["createApiKey"]);
        let body = test_key(&app, &user.access, &id).await;
        let result = &body["data"]["testApiKey"];
        assert_eq!(result["ok"], true, "{input}: {body}");
        assert!(!result["models"].as_array().unwrap().is_empty());
        assert!(result["latencyMs"].as_i64().unwrap() >= 0);
        assert!(result["apiKey"]["lastTestedAt"].is_string());
        assert_eq!(result["apiKey"]["lastTestOk"], true);
        let request = fake.requests().pop().unwrap();
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("GET", "/v1/models")
        );
        let secret = input["secret"].as_str().unwrap();
        if input["provider"] == "ANTHROPIC" {
            assert_eq!(request.header("x-api-key"), Some(secret));
            assert_eq!(request.header("anthropic-version"), Some("2023-06-01"));
            assert!(request.header("authorization").is_none());
        } else {
            assert_eq!(
                request.header("authorization"),
                Some(format!("Bearer {secret}").as_str())
            );
        }
    }
    assert_eq!(fake.requests().len(), 4, "one provider call per test");
}

#[tokio::test]
async fn a_rejected_key_says_so_without_leaking_it() {
    let (app, _fake) = app_with_fake().await;
    let user = app.register("rejected@example.com").await;
    let created = create(
        &app,
        &user.access,
        json!({"name": "o", "provider": "OPENAI", "secret": OPENAI_KEY}),
    )
    .await;
    let id = id_at(&created, &["createApiKey"]);
    let body = test_key(&app, &user.access, &id).await;
    let result = &body["data"]["testApiKey"];
    assert_eq!(result["ok"], false, "{body}");
    assert!(
        result["message"]
            .as_str()
            .unwrap()
            .contains("rejected the key (HTTP 401)"),
        "{body}"
    );
    assert_eq!(result["apiKey"]["lastTestOk"], false);
    assert!(
        !body.to_string().contains(OPENAI_KEY),
        "the key leaked: {body}"
    );
}

#[tokio::test]
async fn a_5xx_or_a_timeout_says_the_provider_is_unreachable() {
    let (app, fake) = app_with_fake().await;
    fake.accept_key(ANTHROPIC_KEY);
    let user = app.register("down@example.com").await;
    let created = create(
        &app,
        &user.access,
        json!({"name": "a", "provider": "ANTHROPIC", "secret": ANTHROPIC_KEY}),
    )
    .await;
    let id = id_at(&created, &["createApiKey"]);

    fake.set_mode(Mode::Status {
        status: 500,
        retry_after_secs: None,
    });
    let body = test_key(&app, &user.access, &id).await;
    assert_eq!(body["data"]["testApiKey"]["ok"], false);
    assert!(
        body["data"]["testApiKey"]["message"]
            .as_str()
            .unwrap()
            .contains("unavailable (HTTP 500)"),
        "{body}"
    );

    fake.set_mode(Mode::Delay(Duration::from_secs(3)));
    let started = std::time::Instant::now();
    let body = test_key(&app, &user.access, &id).await;
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "the timeout was not applied"
    );
    let message = body["data"]["testApiKey"]["message"].as_str().unwrap();
    assert_eq!(body["data"]["testApiKey"]["ok"], false);
    assert!(message.contains("did not answer within 1 s"), "{message}");
    assert!(
        body["data"]["testApiKey"]["apiKey"]["lastTestMessage"]
            .as_str()
            .unwrap()
            .contains("did not answer")
    );

    // Nothing listens at a CUSTOM endpoint: unreachable, and said so.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let created = create(
        &app,
        &user.access,
        json!({"name": "gone", "provider": "CUSTOM", "secret": "x", "endpoint": format!("http://127.0.0.1:{port}/v1")}),
    )
    .await;
    let id = id_at(&created, &["createApiKey"]);
    let body = test_key(&app, &user.access, &id).await;
    assert!(
        body["data"]["testApiKey"]["message"]
            .as_str()
            .unwrap()
            .contains("could not reach"),
        "{body}"
    );
}
