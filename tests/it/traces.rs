//! OpenTelemetry export, the way an operator turns it on: the real binary started with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a local stand-in for an OTLP/HTTP collector (it
//! accepts `POST /v1/traces` in the OTLP JSON encoding). A request carrying a W3C `traceparent`
//! yields spans for the request, the GraphQL operation and each SQL statement, in the caller's
//! trace; a run yields its own trace with the provider call; and the JSON log lines carry the
//! trace id.

use std::{
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::{
    common::{TEST_ENCRYPTION_KEYS, fake_provider::FakeProvider},
    executions::OPENAI_KEY,
};

/// The W3C trace context the client sends.
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// A stand-in OTLP/HTTP collector: keeps every span it receives.
async fn collector() -> (String, Arc<Mutex<Vec<Value>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(
                |State(spans): State<Arc<Mutex<Vec<Value>>>>, body: Bytes| async move {
                    let export: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let mut spans = spans.lock().unwrap();
                    for resource in export["resourceSpans"].as_array().into_iter().flatten() {
                        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                            for span in scope["spans"].as_array().into_iter().flatten() {
                                let mut span = span.clone();
                                span["resource"] = resource["resource"].clone();
                                spans.push(span);
                            }
                        }
                    }
                    // An empty ExportTraceServiceResponse.
                    axum::Json(json!({}))
                },
            ),
        )
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), spans)
}

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

#[tokio::test]
async fn traces_reach_an_otlp_collector_with_the_callers_trace_and_logs_carry_the_trace_id() {
    let (endpoint, spans) = collector().await;
    let fake = FakeProvider::start().await;
    fake.accept_key(OPENAI_KEY);
    let database = format!("agentry_otel_{}", uuid::Uuid::new_v4().simple());
    let base =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://localhost/agentry".into());
    let url = match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{database}"),
        None => base,
    };
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentry"))
        .arg("serve")
        .env("AGENTRY_ENV", "production")
        .env("AGENTRY_LISTEN", format!("127.0.0.1:{port}"))
        .env("AGENTRY_BCRYPT_COST", "10")
        .env(
            "AGENTRY_JWT_SECRET",
            "a-production-secret-of-enough-length-000",
        )
        .env("AGENTRY_ENCRYPTION_KEYS", TEST_ENCRYPTION_KEYS)
        .env("AGENTRY_OPENAI_BASE_URL", format!("{}/v1", fake.base_url()))
        .env("AGENTRY_SHUTDOWN_GRACE_SECS", "3")
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "info,tower_http=debug")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .env("OTEL_SERVICE_NAME", "agentry-trace-test")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..300 {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the server did not become ready");
    let gql = |query: &str, variables: Value, token: Option<&str>, traceparent: bool| {
        let mut request = http
            .post(format!("{base}/graphql"))
            .json(&json!({"query": query, "variables": variables}));
        if traceparent {
            // The operation a traced client names (Apollo sends operationName).
            request = http
                .post(format!("{base}/graphql"))
                .header("traceparent", TRACEPARENT)
                .json(
                    &json!({"query": query, "variables": variables, "operationName": "Register"}),
                );
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let body = gql(
        "mutation Register($i: RegisterInput!) { register(input: $i) { accessToken } }",
        json!({"i": {"email": "trace@example.com", "password": "correct horse battery staple 42", "displayName": "Tracer"}}),
        None,
        true,
    )
    .await;
    let token = body["data"]["register"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned();
    // A run: its own trace, with the provider call in it.
    let key = gql(
        "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { id } }",
        json!({"i": {"name": "k", "provider": "OPENAI", "secret": OPENAI_KEY}}),
        Some(&token),
        false,
    )
    .await;
    let agent = gql(
        "mutation($i: CreateAgentInput!) { createAgent(input: $i) { id } }",
        json!({"i": {"name": "A", "role": "r", "goal": "g", "apiKeyId": key["data"]["createApiKey"]["id"], "model": "gpt-4o-mini"}}),
        Some(&token),
        false,
    )
    .await;
    let run = gql(
        "mutation($a: ID!) { executeAgent(agentId: $a, input: \"Hi\") { id } }",
        json!({"a": agent["data"]["createAgent"]["id"]}),
        Some(&token),
        false,
    )
    .await;
    let run_id = run["data"]["executeAgent"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{run}"))
        .to_owned();
    for _ in 0..200 {
        let status = gql(
            "query($id: ID!) { execution(id: $id) { status } }",
            json!({"id": run_id}),
            Some(&token),
            false,
        )
        .await;
        if status["data"]["execution"]["status"] == "SUCCEEDED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // Stop it: shutting down flushes the spans still batched.
    let pid = child.id().unwrap().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut stdout).await;
    }
    let _ = std::process::Command::new("psql")
        .arg(url.replace(&database, "postgres"))
        .args([
            "-q",
            "-c",
            &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
        ])
        .output();

    let spans = spans.lock().unwrap().clone();
    let in_trace: Vec<&Value> = spans.iter().filter(|s| s["traceId"] == TRACE_ID).collect();
    let names: Vec<&str> = in_trace.iter().filter_map(|s| s["name"].as_str()).collect();
    assert!(names.contains(&"POST /graphql"), "{names:?} of {spans:?}");
    assert!(names.contains(&"graphql Register"), "{names:?}");
    let statements: Vec<&&Value> = in_trace
        .iter()
        .filter(|s| s["name"] == "db.query")
        .collect();
    assert!(!statements.is_empty(), "{names:?}");
    let sql = attribute(statements[0], "db.query.text").unwrap();
    assert!(sql["stringValue"].as_str().is_some(), "{sql}");
    // No bound value leaks into a span: the password and key appear nowhere.
    let everything = serde_json::to_string(&spans).unwrap();
    assert!(!everything.contains("correct horse") && !everything.contains(OPENAI_KEY));
    let request = in_trace
        .iter()
        .find(|s| s["name"] == "POST /graphql")
        .unwrap();
    assert_eq!(request["parentSpanId"], "b7ad6b7169203331", "{request}");
    let status = &attribute(request, "http.response.status_code").unwrap()["intValue"];
    assert_eq!(status, "200", "{request}");
    let service = request["resource"]["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == "service.name")
        .unwrap();
    assert_eq!(service["value"]["stringValue"], "agentry-trace-test");
    // The run is a trace of its own with the provider call in it.
    let run_span = spans
        .iter()
        .find(|s| {
            s["name"] == "execution.run"
                && attribute(s, "execution.id").and_then(|v| v["stringValue"].as_str())
                    == Some(run_id.as_str())
        })
        .unwrap_or_else(|| panic!("no run span in {names:?}"));
    let provider_call = spans
        .iter()
        .find(|s| s["name"] == "llm.request" && s["traceId"] == run_span["traceId"])
        .expect("no provider call span in the run's trace");
    assert_eq!(
        attribute(provider_call, "gen_ai.system").unwrap()["stringValue"],
        "OPENAI"
    );
    assert!(
        spans
            .iter()
            .any(|s| s["name"] == "db.query" && s["traceId"] == run_span["traceId"]),
        "the run's statements are in its trace"
    );
    // JSON log lines of the request carry its trace id.
    let logged = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|l| {
            l["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s["trace_id"] == TRACE_ID))
        });
    assert!(logged, "no log line with trace id {TRACE_ID}: {stdout}");
}
