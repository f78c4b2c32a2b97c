//! Client conformance: the standard GraphQL clients and a real browser against a real server.
//!
//! - the `graphql-http` server audit suite (GraphQL over HTTP): every MUST passes;
//! - Apollo Client 4 with the split HTTP / `GraphQLWsLink` link, and its persisted queries;
//! - the legacy `subscriptions-transport-ws` client (`graphql-ws` subprotocol);
//! - automatic persisted queries over raw HTTP, including a persisted mutation sent by GET;
//! - GraphiQL in Debian's Chromium through playwright-core.
//!
//! The scripts live in tests/js (packages pinned there, installed by `npm ci` on first use).
//! Each suite writes its counts to `<target>/conformance/<suite>.txt`, which `.ci/run` prints;
//! the GraphiQL screenshot is kept as `<target>/graphiql.png`.

use crate::common;

use std::{path::PathBuf, time::Duration};

use common::{
    Session, TestApp,
    fake_provider::{FakeProvider, StreamScript},
    id_at,
    node::run_script,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const OPENAI_KEY: &str = "sk-proj-conformance0123456789";
const TOKENS: [&str; 4] = ["Hello", ",", " browser", "!"];
const GUARD: Duration = Duration::from_secs(90);

/// `CARGO_TARGET_DIR`, else ./target: where CI keeps artefacts.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// Keeps a suite's report for `.ci/run` to print, and shows it in the test's output.
fn report(suite: &str, text: &str) {
    let dir = target_dir().join("conformance");
    std::fs::create_dir_all(&dir).expect("create the conformance report directory");
    std::fs::write(
        dir.join(format!("{suite}.txt")),
        format!("{}\n", text.trim_end()),
    )
    .expect("write the report");
    println!("== {suite}\n{text}");
}

/// A server whose providers point at a fake OpenAI that accepts `OPENAI_KEY` and streams `TOKENS`.
async fn app_with_fake_provider() -> (TestApp, FakeProvider) {
    common::node::ensure_ready().await;
    let fake = FakeProvider::start().await;
    fake.accept_key(OPENAI_KEY);
    fake.set_stream(StreamScript {
        tokens: TOKENS.map(String::from).to_vec(),
        delay_per_token: Duration::from_millis(100),
        ..StreamScript::default()
    });
    let app = TestApp::spawn_with(|c| fake.serve_all_providers(c)).await;
    (app, fake)
}

/// Signs up, creates a key and an agent, and starts a run; returns the user and the run's id.
async fn user_with_a_run(app: &TestApp, email: &str) -> (Session, String) {
    let user = app.register(email).await;
    let body = app
        .gql_as(
            Some(&user.access),
            "mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) { id } }",
            json!({ "input": { "name": "OpenAI", "provider": "OPENAI", "secret": OPENAI_KEY } }),
        )
        .await;
    let key = id_at(&body, &["createApiKey"]);
    let body = app
        .gql_as(
            Some(&user.access),
            "mutation($input: CreateAgentInput!) { createAgent(input: $input) { id } }",
            json!({ "input": { "name": "Greeter", "role": "a greeter", "goal": "greet",
                               "apiKeyId": key, "model": "gpt-4o-mini" } }),
        )
        .await;
    let agent = id_at(&body, &["createAgent"]);
    let body = app
        .gql_as(
            Some(&user.access),
            "mutation($agent: ID!) { executeAgent(agentId: $agent, input: \"Say hello\") { id } }",
            json!({ "agent": agent }),
        )
        .await;
    let execution = id_at(&body, &["executeAgent"]);
    (user, execution)
}

/// Polls until the run has ended.
async fn wait_until_finished(app: &TestApp, user: &Session, execution_id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let body = app
            .gql_as(
                Some(&user.access),
                "query($id: ID!) { execution(id: $id) { status } }",
                json!({ "id": execution_id }),
            )
            .await;
        let status = body["data"]["execution"]["status"].as_str().unwrap_or("?");
        if !matches!(status, "QUEUED" | "RUNNING") {
            assert_eq!(status, "SUCCEEDED", "{body}");
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "run still {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts a complete event stream: 1..=N, STARTED first, COMPLETED last, the tokens between.
fn assert_full_stream(events: &[Value], context: &str) {
    let sequences: Vec<i64> = events
        .iter()
        .filter_map(|e| e["sequence"].as_i64())
        .collect();
    let expected: Vec<i64> = (1..=events.len() as i64).collect();
    assert_eq!(sequences, expected, "not contiguous: {context}");
    assert_eq!(
        events.first().map(|e| &e["kind"]),
        Some(&json!("STARTED")),
        "{context}"
    );
    assert_eq!(
        events.last().map(|e| &e["kind"]),
        Some(&json!("COMPLETED")),
        "{context}"
    );
    let output: String = events
        .iter()
        .filter(|e| e["kind"] == "OUTPUT_DELTA")
        .filter_map(|e| e["delta"].as_str())
        .collect();
    assert_eq!(output, TOKENS.concat(), "{context}");
}

#[tokio::test]
async fn the_graphql_http_audit_suite_passes_every_must_audit() {
    let app = TestApp::spawn().await;
    let out = run_script("audit.mjs", &[app.url("/graphql")], GUARD).await;
    let summary = out
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("AUDIT "))
        .unwrap_or_default()
        .to_owned();
    report("graphql-http-audit", &out.stdout);
    assert!(
        out.status.success(),
        "a MUST audit failed ({}):\n{}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    assert!(summary.contains("error=0"), "{summary}");
}

#[tokio::test]
async fn graphql_js_standard_introspection_queries_pass_the_limits_and_build_a_client_schema() {
    let app = TestApp::spawn().await;
    let out = run_script("introspect.mjs", &[app.url("/graphql")], GUARD).await;
    assert!(out.status.success(), "introspect.mjs failed: {out:#?}");
    let summary: Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("introspect.mjs summary is not JSON ({e}): {out:#?}"));
    for variant in ["default", "everything"] {
        let v = &summary[variant];
        assert_eq!(v["status"], 200, "{summary}");
        assert!(v["types"].as_u64().unwrap_or(0) > 50, "{summary}");
        assert_eq!(v["hasCrew"], true, "{summary}");
        assert_eq!(v["hasSubscription"], true, "{summary}");
    }
    report(
        "graphql-js-introspection",
        &format!(
            "getIntrospectionQuery (default options, and with descriptions, inputValueDeprecation, \
             schemaDescription, specifiedByUrl, directiveIsRepeatable) → buildClientSchema: {} types",
            summary["everything"]["types"]
        ),
    );
}

#[tokio::test]
async fn graphql_codegen_client_preset_generates_types_from_the_running_server_that_tsc_accepts() {
    let app = TestApp::spawn().await;
    let out = run_script(
        "codegen.mjs",
        &[app.url("/graphql")],
        Duration::from_secs(120),
    )
    .await;
    assert!(out.status.success(), "codegen.mjs failed: {out:#?}");
    let summary: Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("codegen.mjs summary is not JSON ({e}): {out:#?}"));
    let generated = summary["generated"].as_array().expect("generated files");
    assert!(generated.iter().any(|f| f == "graphql.ts"), "{summary}");
    report(
        "graphql-codegen",
        &format!(
            "@graphql-codegen/cli client preset from the server's URL: {} files; tsc --strict \
             accepts them and typed uses of a query, a mutation and crewRunEvents",
            generated.len()
        ),
    );
}

#[tokio::test]
async fn apollo_client_4_signs_up_runs_an_agent_and_streams_events_over_the_split_link() {
    let (app, _fake) = app_with_fake_provider().await;
    let ws = format!("ws://{}/graphql", app.addr);
    let out = run_script(
        "apollo.mjs",
        &[app.url("/graphql"), ws, OPENAI_KEY.to_owned()],
        GUARD,
    )
    .await;
    assert!(out.status.success(), "apollo.mjs failed: {out:#?}");
    let summary: Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("apollo.mjs summary is not JSON ({e}): {out:#?}"));
    let events = summary["events"].as_array().expect("events");
    assert_full_stream(events, &out.stdout);

    // Automatic persisted queries: hash only → PERSISTED_QUERY_NOT_FOUND, then the query with
    // its hash, then (a second client) the hash alone is enough — over POST and over GET.
    let mut lines = vec![format!(
        "Apollo Client 4 split link: {} events streamed over GraphQLWsLink, last {}",
        events.len(),
        events
            .last()
            .map(|e| e["kind"].to_string())
            .unwrap_or_default()
    )];
    // A two-task crew: every event of both tasks through one crewRunEvents subscription.
    let crew = &summary["crew"];
    assert_eq!(crew["inputs"], json!(["topic"]));
    let items = crew["items"].as_array().expect("crew items");
    let started: Vec<&Value> = items
        .iter()
        .filter(|i| i["kind"] == "STEP_STARTED")
        .collect();
    assert_eq!(started.len(), 2, "{items:#?}");
    for (index, step) in started.iter().enumerate() {
        assert_eq!(step["taskIndex"], index, "{items:#?}");
        let events: Vec<Value> = items
            .iter()
            .filter(|i| i["kind"] == "STEP_EVENT" && i["executionId"] == step["executionId"])
            .map(|i| i["event"].clone())
            .collect();
        assert_full_stream(&events, &out.stdout);
    }
    let last = items.last().expect("a terminal item");
    assert_eq!(last["kind"], "SUCCEEDED", "{items:#?}");
    assert!(!last["crewRun"]["output"].as_str().unwrap_or("").is_empty());
    lines.push(format!(
        "crew of two tasks over one crewRunEvents subscription: {} items, {} steps, ended {}",
        items.len(),
        started.len(),
        last["kind"]
    ));
    for (phase, method) in [("post", "POST"), ("get", "GET")] {
        let wire = summary["apq"][phase].as_array().expect("apq wire");
        assert_eq!(wire.len(), 3, "{phase}: {wire:#?}");
        assert_eq!(wire[0]["method"], method, "{phase}: {wire:#?}");
        assert_eq!(wire[0]["sentQuery"], false, "{phase}: {wire:#?}");
        assert_eq!(
            wire[0]["code"], "PERSISTED_QUERY_NOT_FOUND",
            "{phase}: {wire:#?}"
        );
        assert_eq!(wire[1]["sentQuery"], true, "{phase}: {wire:#?}");
        assert_eq!(wire[1]["email"], summary["email"], "{phase}: {wire:#?}");
        assert_eq!(wire[2]["method"], method, "{phase}: {wire:#?}");
        assert_eq!(wire[2]["sentQuery"], false, "{phase}: {wire:#?}");
        assert_eq!(wire[2]["email"], summary["email"], "{phase}: {wire:#?}");
        lines.push(format!(
            "APQ over {method}: {} → {} (full query) → {} (hash only): ok",
            wire[0]["code"], wire[1]["status"], wire[2]["status"]
        ));
    }
    report("apollo-client", &lines.join("\n"));
}

#[tokio::test]
async fn the_legacy_subscriptions_transport_ws_client_receives_every_event_to_completion() {
    let (app, _fake) = app_with_fake_provider().await;
    let (user, execution) = user_with_a_run(&app, "legacy@example.com").await;
    let ws = format!("ws://{}/graphql", app.addr);
    let out = run_script("legacy.mjs", &[ws, user.access.clone(), execution], GUARD).await;
    assert!(out.status.success(), "legacy.mjs failed: {out:#?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.last(), Some(&"COMPLETE"), "{out:#?}");
    let events: Vec<Value> = lines[..lines.len() - 1]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_full_stream(&events, &out.stdout);
    report(
        "subscriptions-transport-ws",
        &format!(
            "legacy graphql-ws subprotocol: {} events, then complete",
            events.len()
        ),
    );
}

#[tokio::test]
async fn persisted_queries_round_trip_over_post_and_get_and_a_persisted_mutation_is_refused_by_get()
{
    let app = TestApp::spawn().await;
    let query = "query Typename { __typename }";
    let hash = format!("{:x}", Sha256::digest(query.as_bytes()));
    let extensions = json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } });
    let get = |extensions: &Value| {
        app.http
            .get(app.url("/graphql"))
            .query(&[("extensions", extensions.to_string())])
            .send()
    };

    let unknown: Value = get(&extensions)
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(
        unknown["errors"][0]["extensions"]["code"],
        "PERSISTED_QUERY_NOT_FOUND"
    );
    assert_eq!(unknown["errors"][0]["message"], "PersistedQueryNotFound");
    let registered = app
        .post(None, &json!({ "query": query, "extensions": extensions }))
        .await;
    let registered: Value = registered.json().await.expect("json");
    assert_eq!(registered["data"]["__typename"], "Query", "{registered}");
    let by_post = app.post(None, &json!({ "extensions": extensions })).await;
    let by_post: Value = by_post.json().await.expect("json");
    assert_eq!(by_post["data"]["__typename"], "Query", "{by_post}");
    let by_get: Value = get(&extensions)
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(by_get["data"]["__typename"], "Query", "{by_get}");

    let wrong = json!({ "persistedQuery": { "version": 1, "sha256Hash": "0".repeat(64) } });
    let mismatch = app
        .post(None, &json!({ "query": query, "extensions": wrong }))
        .await;
    assert_eq!(mismatch.status(), 400);

    // A mutation, registered by POST (it fails there: no token), then sent by hash with GET.
    let mutation = "mutation { deleteAgent(id: \"00000000-0000-0000-0000-000000000000\") }";
    let mutation_hash = format!("{:x}", Sha256::digest(mutation.as_bytes()));
    let mutation_ext = json!({ "persistedQuery": { "version": 1, "sha256Hash": mutation_hash } });
    app.post(
        None,
        &json!({ "query": mutation, "extensions": mutation_ext }),
    )
    .await;
    let refused = get(&mutation_ext).await.expect("GET");
    assert_eq!(refused.status(), 405);
    let refused: Value = refused.json().await.expect("json");
    assert_eq!(
        refused["errors"][0]["extensions"]["code"],
        "METHOD_NOT_ALLOWED"
    );
}

#[tokio::test]
async fn graphql_response_json_gets_400_for_request_errors_and_json_keeps_200() {
    let app = TestApp::spawn().await;
    let send = |accept: &'static str, query: &'static str| {
        app.http
            .post(app.url("/graphql"))
            .header("content-type", "application/json")
            .header("accept", accept)
            .json(&json!({ "query": query }))
            .send()
    };
    let invalid = send("application/graphql-response+json", "{ noSuchField }")
        .await
        .expect("POST");
    assert_eq!(invalid.status(), 400);
    assert!(
        invalid.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("application/graphql-response+json")
    );
    let body: Value = invalid.json().await.expect("json");
    assert!(body.get("data").is_none(), "{body}");
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "GRAPHQL_VALIDATION_FAILED"
    );
    assert!(
        body["errors"][0]["extensions"]["requestId"].is_string(),
        "{body}"
    );

    let legacy = send("application/json", "{ noSuchField }")
        .await
        .expect("POST");
    assert_eq!(legacy.status(), 200);
    let ok = send(
        "application/graphql-response+json, application/json;q=0.9",
        "{ __typename }",
    )
    .await
    .expect("POST");
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn graphiql_in_chromium_runs_a_query_and_a_subscription_with_the_token_from_the_headers_pane()
{
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "no Chromium at {chromium}: install Debian's `chromium` package (`.ci/run` does: \
         apt-get install -y chromium) or set CHROMIUM_PATH"
    );
    let (app, _fake) = app_with_fake_provider().await;
    let email = "graphiql@example.com";
    let (user, execution) = user_with_a_run(&app, email).await;
    wait_until_finished(&app, &user, &execution).await;
    let screenshot = target_dir().join("graphiql.png");
    let _ = std::fs::remove_file(&screenshot);
    let out = run_script(
        "graphiql.mjs",
        &[
            app.url(""),
            user.access.clone(),
            execution,
            screenshot.display().to_string(),
        ],
        GUARD,
    )
    .await;
    assert!(out.status.success(), "graphiql.mjs failed: {out:#?}");
    let shown: Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("graphiql.mjs output is not JSON ({e}): {out:#?}"));
    let me = shown["me"].as_str().expect("me");
    assert!(me.contains(email), "the result pane shows {me}");
    let subscription = shown["subscription"].as_str().expect("subscription");
    assert!(
        subscription.contains("\"kind\": \"COMPLETED\""),
        "the result pane shows {subscription}"
    );
    assert_eq!(shown["failures"], json!([]), "{out:#?}");
    assert!(
        screenshot.exists(),
        "no screenshot at {}",
        screenshot.display()
    );
    report(
        "graphiql-chromium",
        &format!(
            "GraphiQL {}: query with the headers-pane token showed {email}; subscription showed \
             COMPLETED; screenshot {}",
            agentry::http::graphql::GRAPHIQL_VERSION,
            screenshot.display()
        ),
    );
}

#[tokio::test]
async fn a_refused_batch_registers_none_of_its_persisted_queries() {
    let app = TestApp::spawn_with(|c| c.max_batch = 10).await;
    let register = |i: usize| {
        let query = format!("query Q{i} {{ __typename }}");
        let hash = format!("{:x}", Sha256::digest(query.as_bytes()));
        (
            json!({ "query": query, "extensions": { "persistedQuery": { "version": 1, "sha256Hash": hash } } }),
            hash,
        )
    };
    let (items, hashes): (Vec<Value>, Vec<String>) = (0..11).map(register).unzip();
    let refused = app.post(None, &Value::Array(items)).await;
    assert_eq!(refused.status(), 400);
    // None of the eleven was stored: each hash alone is still unknown.
    for hash in &hashes {
        let by_hash = app
            .post(
                None,
                &json!({ "extensions": { "persistedQuery": { "version": 1, "sha256Hash": hash } } }),
            )
            .await;
        let body: Value = by_hash.json().await.unwrap();
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "PERSISTED_QUERY_NOT_FOUND",
            "{body}"
        );
    }
}

#[tokio::test]
async fn apollo_upload_client_uploads_a_file_that_an_agent_then_reads() {
    common::node::ensure_ready().await;
    let (_backends, w) = crate::tools::openai_world(&["FILES"], json!({})).await;
    w.fake
        .queue_tool_turn(common::fake_provider::ToolTurn::calls(&[(
            "read_file",
            r#"{"name": "quarterly.txt"}"#,
        )]));
    let out = run_script(
        "upload.mjs",
        &[
            w.app.url("/graphql"),
            w.user.access.clone(),
            w.agent_id.clone(),
        ],
        GUARD,
    )
    .await;
    assert!(out.status.success(), "upload.mjs failed: {out:#?}");
    let summary: Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("upload.mjs summary is not JSON ({e}): {out:#?}"));
    let file = &summary["file"];
    assert_eq!(file["name"], "quarterly.txt");
    assert_eq!(file["contentType"], "text/plain");
    assert_eq!(file["size"], 31);
    let id = summary["executionId"].as_str().expect("run id");
    assert_eq!(w.finished(id).await["status"], "SUCCEEDED");
    let events = w.events(id).await;
    let read = events
        .iter()
        .find(|e| e["kind"] == "TOOL_RESULT")
        .expect("the agent read the file");
    assert_eq!(read["data"]["result"], "Quarterly revenue: 42 million.\n");
    report(
        "apollo-upload-client",
        &format!(
            "apollo-upload-client 20 UploadHttpLink: uploaded {} ({} bytes, {}); run {id} read it with read_file",
            file["name"], file["size"], file["contentType"]
        ),
    );
}
