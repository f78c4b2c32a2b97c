//! Where a key may send its secret: a moved endpoint needs the secret again, no redirects, no internal addresses, the operator's own base URLs.

use super::*;

#[tokio::test]
async fn moving_a_key_to_another_endpoint_needs_its_secret_again() {
    let (app, _fake) = app_with_fake().await;
    let user = app.register("move@example.com").await;
    let created = create(
        &app,
        &user.access,
        json!({"name": "local", "provider": "CUSTOM", "secret": "local-llm-token", "endpoint": "http://127.0.0.1:8000/v1"}),
    )
    .await;
    let id = created["data"]["createApiKey"]["id"].as_str().unwrap();
    let update = |input: Value| {
        app.gql_as(
            Some(&user.access),
            "mutation($id: ID!, $input: UpdateApiKeyInput!) { updateApiKey(id: $id, input: $input) { endpoint maskedKey } }",
            json!({"id": id, "input": input}),
        )
    };
    // Without the secret the stored one would follow the key to a host of the caller's choice.
    let refused = update(json!({"endpoint": "https://collector.example/v1"})).await;
    assert_eq!(
        (code(&refused), field(&refused)),
        ("BAD_USER_INPUT", "input.secret"),
        "{refused}"
    );
    let stored = app
        .count("SELECT count(*) FROM api_keys WHERE endpoint = 'http://127.0.0.1:8000/v1'")
        .await;
    assert_eq!(stored, 1, "the refused move changed nothing");
    // The same endpoint again, or a rename, needs no secret.
    let same = update(json!({"endpoint": "http://127.0.0.1:8000/v1", "name": "still local"})).await;
    assert!(same["errors"].is_null(), "{same}");
    // With the secret it moves.
    let moved =
        update(json!({"endpoint": "https://llm.example.com/v1", "secret": "remote-llm-token"}))
            .await;
    assert_eq!(
        moved["data"]["updateApiKey"]["endpoint"], "https://llm.example.com/v1",
        "{moved}"
    );
}

/// A local server answering `GET /v1/models` with `answer`; returns its port and a hit counter.
async fn models_server(
    answer: fn(u16) -> axum::response::Response,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::{Arc, atomic::AtomicUsize};
    let hits = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let counted = hits.clone();
    let app = axum::Router::new().fallback(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move { answer(port) }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, hits)
}

#[tokio::test]
async fn provider_calls_follow_no_redirect_and_reach_no_internal_address() {
    use axum::response::IntoResponse;
    // The "internal" service (think 169.254.169.254) that must never be reached.
    let (internal_port, internal_hits) = models_server(|_| {
        axum::Json(
            json!({"object": "list", "data": [{"id": "instance-credentials", "object": "model"}]}),
        )
        .into_response()
    })
    .await;
    // The attacker's endpoint, reachable by name, redirecting there.
    static INTERNAL: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    INTERNAL.set(internal_port).unwrap();
    let (public_port, public_hits) = models_server(|_| {
        axum::response::Response::builder()
            .status(307)
            .header(
                "location",
                format!("http://127.0.0.1:{}/v1/models", INTERNAL.get().unwrap()),
            )
            .body(axum::body::Body::empty())
            .unwrap()
    })
    .await;
    let app = TestApp::spawn_with(|c| {
        c.environment = agentry::config::Environment::Production;
        c.bcrypt_cost = 10;
        c.egress_allow = vec!["localhost".into()];
    })
    .await;
    let user = app.register("ssrf@example.com").await;
    let probe = |endpoint: String| {
        let (app, token) = (&app, user.access.clone());
        async move {
            let created = create(app, &token, json!({"name": endpoint.clone(), "provider": "CUSTOM", "secret": "attacker-chosen", "endpoint": endpoint})).await;
            let id = id_at(&created, &["createApiKey"]);
            test_key(app, &token, &id).await["data"]["testApiKey"].clone()
        }
    };

    // 1. A redirect is not followed: the result is the redirect's failure, not the internal data.
    let redirected = probe(format!("http://localhost:{public_port}/v1")).await;
    assert_eq!(redirected["ok"], false, "{redirected}");
    assert_eq!(redirected["models"], json!([]), "{redirected}");
    assert!(public_hits.load(std::sync::atomic::Ordering::SeqCst) >= 1);

    // 2. An internal address written as an IP is refused before any request.
    let literal = probe(format!("http://127.0.0.1:{internal_port}/v1")).await;
    assert_eq!(literal["ok"], false, "{literal}");
    assert!(
        literal["message"]
            .as_str()
            .unwrap()
            .contains("AGENTRY_EGRESS_ALLOW"),
        "{literal}"
    );
    // 3. So is an IPv4-mapped IPv6 spelling of it (https, so that the endpoint's own rules
    //    let it through to the egress check).
    let mapped = probe(format!("https://[::ffff:127.0.0.1]:{internal_port}/v1")).await;
    assert_eq!(mapped["ok"], false, "{mapped}");

    assert_eq!(
        internal_hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the internal service was reached"
    );
}

#[tokio::test]
async fn a_name_that_resolves_to_an_internal_address_is_refused() {
    use axum::response::IntoResponse;
    let (port, hits) = models_server(|_| {
        axum::Json(json!({"object": "list", "data": [{"id": "secret-model", "object": "model"}]}))
            .into_response()
    })
    .await;
    let app = TestApp::spawn_with(|c| {
        c.environment = agentry::config::Environment::Production;
        c.bcrypt_cost = 10;
    })
    .await;
    let user = app.register("rebind@example.com").await;
    let created = create(&app, &user.access, json!({"name": "n", "provider": "CUSTOM", "secret": "s", "endpoint": format!("http://localhost:{port}/v1")})).await;
    let id = created["data"]["createApiKey"]["id"].as_str().unwrap();
    let result = test_key(&app, &user.access, id).await;
    let result = &result["data"]["testApiKey"];
    assert_eq!(result["ok"], false, "{result}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_operators_own_provider_base_urls_stay_reachable_in_production() {
    // An operator may point AGENTRY_OPENAI_BASE_URL at an internal proxy (here a loopback
    // address): the egress policy refuses such addresses to users, never to that setting.
    let fake = FakeProvider::start().await;
    fake.accept_key(OPENAI_KEY);
    let app = TestApp::spawn_with(|c| {
        c.environment = agentry::config::Environment::Production;
        c.bcrypt_cost = 10;
        fake.serve_all_providers(c);
    })
    .await;
    let user = app.register("operator-proxy@example.com").await;
    let created = create(
        &app,
        &user.access,
        json!({"name": "o", "provider": "OPENAI", "secret": OPENAI_KEY}),
    )
    .await;
    let id = created["data"]["createApiKey"]["id"].as_str().unwrap();
    let tested = test_key(&app, &user.access, id).await;
    assert_eq!(tested["data"]["testApiKey"]["ok"], true, "{tested}");
}
