//! Operating Agentry: Prometheus metrics, graceful shutdown of a real `agentry serve` process,
//! and backup / restore with verification.

mod backup;

use crate::common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    TEST_ENCRYPTION_KEYS, TestApp, WsEvent,
    fake_provider::{FakeProvider, Mode, StreamScript},
    id_at,
};
use serde_json::{Value, json};

const OPENAI_KEY: &str = "sk-proj-abcdefghijklmnop1234";
const JWT: &str = "test-secret-test-secret-test-secret-0123";

/// A user with a key and an agent, created through `app`.
async fn user_with_agent(app: &TestApp, email: &str) -> (common::Session, String, String) {
    let user = app.register(email).await;
    let key = app
        .gql_as(
            Some(&user.access),
            "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { id } }",
            json!({"i": {"name": "k", "provider": "OPENAI", "secret": OPENAI_KEY}}),
        )
        .await;
    let key_id = id_at(&key, &["createApiKey"]);
    let agent = app
        .gql_as(
            Some(&user.access),
            "mutation($i: CreateAgentInput!) { createAgent(input: $i) { id } }",
            json!({"i": {"name": "A", "role": "r", "goal": "g", "apiKeyId": key_id, "model": "gpt-4o-mini"}}),
        )
        .await;
    let agent_id = id_at(&agent, &["createAgent"]);
    (user, key_id, agent_id)
}

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test]
async fn metrics_expose_the_named_series_and_they_move() {
    let fake = FakeProvider::start().await;
    fake.accept_key(OPENAI_KEY);
    fake.set_stream(StreamScript {
        input_tokens: 7,
        output_tokens: 5,
        ..StreamScript::default()
    });
    let app = TestApp::spawn_with(|c| {
        fake.serve_all_providers(c);
        c.auth_rate_limit_per_minute = 3;
    })
    .await;
    let scrape = || async {
        app.http
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let before = scrape().await;
    let (user, _, agent) = user_with_agent(&app, "metrics@example.com").await;
    app.post(
        Some(&user.access),
        &json!({"query": "query Me { me { id } }", "operationName": "Me"}),
    )
    .await;
    let run = app
        .gql_as(
            Some(&user.access),
            "mutation($a: ID!) { executeAgent(agentId: $a, input: \"hi\") { id } }",
            json!({"a": agent}),
        )
        .await;
    let run_id = id_at(&run, &["executeAgent"]);
    for _ in 0..100 {
        let status = app
            .gql_as(
                Some(&user.access),
                "query($id: ID!) { execution(id: $id) { status } }",
                json!({"id": run_id}),
            )
            .await;
        if status["data"]["execution"]["status"] == "SUCCEEDED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..4 {
        app.gql("mutation { login(email: \"x@example.com\", password: \"nope-nope-nope\") { accessToken } }", json!({})).await;
    }
    let mut ws = app.ws("graphql-transport-ws", None).await.unwrap();
    ws.init(json!({"Authorization": format!("Bearer {}", user.access)}))
        .await;
    ws.send(json!({"id": "1", "type": "subscribe", "payload": {"query": "subscription { executionUpdates { id } }"}})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = scrape().await;

    for series in [
        "agentry_http_requests_total",
        "agentry_http_request_duration_seconds_bucket",
        "agentry_graphql_operations_total",
        "agentry_websocket_connections",
        "agentry_graphql_active_subscriptions",
        "agentry_rate_limit_rejections_total",
        "agentry_db_pool_connections",
        "agentry_executions_total",
        "agentry_provider_first_byte_seconds_bucket",
        "agentry_llm_tokens_total",
    ] {
        assert!(after.contains(series), "missing {series}:\n{after}");
    }
    let moved = |name: &str, labels: &[(&str, &str)]| {
        metric(&after, name, labels) - metric(&before, name, labels)
    };
    assert!(
        moved(
            "agentry_http_requests_total",
            &[("route", "/graphql"), ("method", "POST"), ("status", "200")]
        ) >= 3.0
    );
    assert!(
        moved(
            "agentry_graphql_operations_total",
            &[("operation", "Me"), ("outcome", "ok")]
        ) >= 1.0
    );
    assert!(
        moved(
            "agentry_executions_total",
            &[("status", "SUCCEEDED"), ("provider", "OPENAI")]
        ) >= 1.0
    );
    assert!(
        moved(
            "agentry_llm_tokens_total",
            &[("provider", "OPENAI"), ("direction", "output")]
        ) >= 5.0
    );
    assert!(
        moved(
            "agentry_rate_limit_rejections_total",
            &[("limiter", "sign_in_ip")]
        ) >= 1.0
    );
    assert!(metric(&after, "agentry_websocket_connections", &[]) >= 1.0);
    assert!(metric(&after, "agentry_graphql_active_subscriptions", &[]) >= 1.0);
    assert!(metric(&after, "agentry_db_pool_connections", &[("state", "max")]) >= 1.0);
}

#[tokio::test]
async fn metrics_can_require_a_bearer_token() {
    let app =
        TestApp::spawn_with(|c| c.metrics_token = Some("scrape-me-please".to_owned().into())).await;
    let open = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(open.status(), 401);
    let wrong = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth("scrape-me-please")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    assert!(right.text().await.unwrap().contains("agentry_"));
}

#[tokio::test]
async fn production_serves_metrics_only_behind_a_token() {
    let app = TestApp::spawn_with(|c| {
        c.environment = agentry::config::Environment::Production;
        c.bcrypt_cost = 10;
    })
    .await;
    let open = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(open.status(), 404);
    assert!(open.text().await.unwrap().contains("AGENTRY_METRICS_TOKEN"));
}

/// `agentry serve` as a child process on `database_url`, providers at `fake`.
fn serve(database_url: &str, fake: &FakeProvider, port: u16) -> std::process::Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentry"));
    for (key, _) in std::env::vars() {
        if key.starts_with("AGENTRY_") {
            command.env_remove(key);
        }
    }
    command
        .arg("serve")
        .env("DATABASE_URL", database_url)
        .env("AGENTRY_LISTEN", format!("127.0.0.1:{port}"))
        .env("AGENTRY_JWT_SECRET", JWT)
        .env("AGENTRY_ENCRYPTION_KEYS", TEST_ENCRYPTION_KEYS)
        .env("AGENTRY_BCRYPT_COST", "4")
        .env("AGENTRY_OPENAI_BASE_URL", format!("{}/v1", fake.base_url()))
        .env("AGENTRY_SHUTDOWN_DRAIN_SECS", "1")
        .env("AGENTRY_SHUTDOWN_GRACE_SECS", "10")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start agentry serve")
}

#[tokio::test]
async fn sigterm_drains_requests_closes_sockets_with_1001_and_ends_runs() {
    let fake = FakeProvider::start().await;
    fake.accept_key(OPENAI_KEY);
    fake.set_stream(StreamScript {
        tokens: (0..200).map(|i| format!("w{i} ")).collect(),
        delay_per_token: Duration::from_millis(50),
        ..StreamScript::default()
    });
    let app = TestApp::spawn().await;
    let (user, key_id, agent) = user_with_agent(&app, "shutdown@example.com").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = serve(&app.database_url, &fake, port);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut up = false;
    for _ in 0..100 {
        if client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "server did not start");
    let post = |body: Value| {
        let (client, base, token) = (client.clone(), base.clone(), user.access.clone());
        async move {
            client
                .post(format!("{base}/graphql"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    // A run streaming on the child process, and a subscriber on it.
    let run = post(json!({"query": "mutation($a: ID!) { executeAgent(agentId: $a, input: \"long\") { id } }", "variables": {"a": agent}})).await;
    let run_id = id_at(&run, &["executeAgent"]);
    let (mut socket, _) = {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://127.0.0.1:{port}/graphql")
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        tokio_tungstenite::connect_async(request).await.unwrap()
    };
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    socket
        .send(Message::Text(json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {}", user.access)}}).to_string().into()))
        .await
        .unwrap();
    socket
        .send(Message::Text(json!({"id": "1", "type": "subscribe", "payload": {"query": "subscription($id: ID!) { executionEvents(executionId: $id) { sequence kind } }", "variables": {"id": run_id}}}).to_string().into()))
        .await
        .unwrap();
    // Wait until output is streaming.
    let mut deltas = 0;
    while deltas < 2 {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("events")
        {
            Some(Ok(Message::Text(t))) if t.contains("OUTPUT_DELTA") => deltas += 1,
            Some(Ok(_)) => {}
            other => panic!("socket ended early: {other:?}"),
        }
    }
    // An in-flight request: the provider answers the key test only after 1.5 s.
    fake.set_mode(Mode::Delay(Duration::from_millis(1500)));
    let in_flight = tokio::spawn(post(
        json!({"query": "mutation($id: ID!) { testApiKey(id: $id) { ok latencyMs } }", "variables": {"id": key_id}}),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Draining: not ready any more, but still answering.
    let ready = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("still listening while draining");
    assert_eq!(ready.status(), 503);

    let mut close_code = None;
    while close_code.is_none() {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("close frame")
        {
            Some(Ok(Message::Close(frame))) => close_code = Some(frame.map(|f| u16::from(f.code))),
            Some(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    }
    assert_eq!(close_code, Some(Some(1001)));

    let answered = in_flight.await.unwrap();
    assert_eq!(
        answered["data"]["testApiKey"]["ok"], true,
        "the in-flight request completed: {answered}"
    );
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
    // After exit, new connections are refused.
    assert!(client.get(format!("{base}/healthz")).send().await.is_err());

    // The run ended with a terminal event, not left RUNNING.
    let ended = app
        .gql_as(
            Some(&user.access),
            "query($id: ID!) { execution(id: $id) { status error events(first: 1000) { kind } } }",
            json!({"id": run_id}),
        )
        .await;
    let execution = &ended["data"]["execution"];
    assert_eq!(execution["status"], "FAILED", "{ended}");
    assert!(execution["error"].as_str().unwrap().contains("shut down"));
    assert_eq!(
        execution["events"].as_array().unwrap().last().unwrap()["kind"],
        "FAILED"
    );
    assert!(
        fake.client_disconnects() >= 1,
        "the provider stream was closed"
    );
}

#[tokio::test]
async fn a_websocket_client_sees_1001_when_an_in_process_server_stops() {
    let mut app = TestApp::spawn().await;
    let user = app.register("ws-stop@example.com").await;
    let mut ws = app.ws("graphql-transport-ws", None).await.unwrap();
    ws.init(json!({"Authorization": format!("Bearer {}", user.access)}))
        .await;
    app.stop().await;
    match ws.next(5).await {
        WsEvent::Closed(code, _) => assert_eq!(code, 1001),
        other => panic!("expected 1001, got {other:?}"),
    }
}

fn agentry_cli(database_url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentry"));
    for (key, _) in std::env::vars() {
        if key.starts_with("AGENTRY_") {
            command.env_remove(key);
        }
    }
    command
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn");
    command
}

// Multi-threaded: the CLI runs as a blocking child process while this runtime serves the fake S3.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_reported_to_sentry_when_a_dsn_is_set() {
    use axum::{body::Bytes, extract::State, routing::post};
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<String>>>;
    let seen: Seen = Default::default();
    let app = axum::Router::new()
        .route(
            "/api/{project}/envelope/",
            post(|State(seen): State<Seen>, body: Bytes| async move {
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&body).to_string());
                axum::http::StatusCode::OK
            }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let output = agentry_cli("postgres://app:pw-never-sent@127.0.0.1:1/agentry")
        .arg("migrate")
        .env("SENTRY_DSN", format!("http://public@127.0.0.1:{port}/42"))
        .env(
            "AGENTRY_DATA_DIR",
            std::env::temp_dir().join("agentry-sentry-test"),
        )
        .output()
        .unwrap();
    assert!(!output.status.success());
    let reports = seen.lock().unwrap().clone();
    assert!(
        reports
            .iter()
            .any(|r| r.contains("could not reach PostgreSQL")),
        "no Sentry event received: {reports:?}"
    );
    assert!(
        reports.iter().all(|r| !r.contains("pw-never-sent")),
        "a password reached Sentry"
    );
}
