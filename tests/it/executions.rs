//! Runs end to end: executeAgent against local fake OpenAI and Anthropic servers, events
//! streamed over a real graphql-transport-ws WebSocket, replay and resume, two server instances
//! on one database, cancellation, provider failures, idempotency, the concurrency cap, timeouts,
//! recovery, usage and cost, and isolation.

use crate::common;

use std::time::Duration;

use common::{
    ALLOWED_ORIGIN, Session, TestApp, WsEvent, code,
    fake_provider::{FakeProvider, Mode, StreamScript},
    field, id_at,
};
use serde_json::{Value, json};

pub(crate) const OPENAI_KEY: &str = "sk-proj-abcdefghijklmnop1234";
const ANTHROPIC_KEY: &str = "sk-ant-api03-abcdefghijklmnop9876";

/// A server whose providers point at a fake, with a user, a key and an agent.
pub(crate) struct World {
    pub(crate) app: TestApp,
    pub(crate) fake: FakeProvider,
    pub(crate) user: Session,
    pub(crate) key_id: String,
    pub(crate) agent_id: String,
}

pub(crate) async fn world_with(
    provider: &str,
    model: &str,
    adjust: impl FnOnce(&mut agentry::config::Config),
) -> World {
    let fake = FakeProvider::start().await;
    fake.accept_key(OPENAI_KEY);
    fake.accept_key(ANTHROPIC_KEY);
    let app = TestApp::spawn_with(|c| {
        fake.serve_all_providers(c);
        c.provider_timeout_secs = 1;
        c.provider_retry_base_ms = 10;
        c.execution_heartbeat_secs = 1;
        adjust(c);
    })
    .await;
    let user = app.register("runner@example.com").await;
    let secret = if provider == "ANTHROPIC" {
        ANTHROPIC_KEY
    } else {
        OPENAI_KEY
    };
    let key = app
        .gql_as(
            Some(&user.access),
            "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { id } }",
            json!({"i": {"name": "key", "provider": provider, "secret": secret}}),
        )
        .await;
    let key_id = id_at(&key, &["createApiKey"]);
    let agent = app
        .gql_as(
            Some(&user.access),
            "mutation($i: CreateAgentInput!) { createAgent(input: $i) { id } }",
            json!({"i": {"name": "Helper", "role": "a helpful assistant", "goal": "answer briefly", "backstory": "trained on haiku", "apiKeyId": key_id, "model": model, "temperature": 0.2, "maxOutputTokens": 256}}),
        )
        .await;
    let agent_id = id_at(&agent, &["createAgent"]);
    World {
        app,
        fake,
        user,
        key_id,
        agent_id,
    }
}

async fn world() -> World {
    world_with("OPENAI", "gpt-4o-mini", |_| {}).await
}

const EXECUTION: &str = "id status input output error inputTokens outputTokens costUsd costEstimated model startedAt finishedAt";

impl World {
    pub(crate) async fn execute(&self, input: &str) -> Value {
        self.app
            .gql_as(
                Some(&self.user.access),
                &format!("mutation($a: ID!, $i: String!) {{ executeAgent(agentId: $a, input: $i) {{ {EXECUTION} }} }}"),
                json!({"a": self.agent_id, "i": input}),
            )
            .await
    }

    pub(crate) async fn start(&self, input: &str) -> String {
        let body = self.execute(input).await;
        id_at(&body, &["executeAgent"])
    }

    pub(crate) async fn execution(&self, id: &str) -> Value {
        let body = self
            .app
            .gql_as(
                Some(&self.user.access),
                &format!("query($id: ID!) {{ execution(id: $id) {{ {EXECUTION} }} }}"),
                json!({"id": id}),
            )
            .await;
        body["data"]["execution"].clone()
    }

    /// Polls until the run has ended.
    pub(crate) async fn finished(&self, id: &str) -> Value {
        for _ in 0..600 {
            let execution = self.execution(id).await;
            if !matches!(execution["status"].as_str(), Some("QUEUED" | "RUNNING")) {
                return execution;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("run {id} did not finish");
    }

    pub(crate) async fn events(&self, id: &str) -> Vec<Value> {
        let body = self
            .app
            .gql_as(
                Some(&self.user.access),
                "query($id: ID!) { execution(id: $id) { events(first: 1000) { sequence kind delta data } } }",
                json!({"id": id}),
            )
            .await;
        body["data"]["execution"]["events"]
            .as_array()
            .unwrap_or_else(|| panic!("{body}"))
            .clone()
    }
}

/// Subscribes over graphql-transport-ws and collects events until `complete`.
pub(crate) async fn subscribe(
    app: &TestApp,
    token: &str,
    id: &str,
    after: Option<i32>,
) -> Result<Vec<Value>, Value> {
    let mut ws = app
        .ws("graphql-transport-ws", Some(ALLOWED_ORIGIN))
        .await
        .expect("connect");
    match ws
        .init(json!({"Authorization": format!("Bearer {token}")}))
        .await
    {
        WsEvent::Json(m) if m["type"] == "connection_ack" => {}
        other => panic!("no ack: {other:?}"),
    }
    ws.send(json!({
        "id": "1",
        "type": "subscribe",
        "payload": {
            "query": "subscription($id: ID!, $after: Int) { executionEvents(executionId: $id, after: $after) { executionId sequence kind delta data at } }",
            "variables": {"id": id, "after": after}
        }
    }))
    .await;
    let mut events = Vec::new();
    loop {
        match ws.next(15).await {
            WsEvent::Json(m) if m["type"] == "next" => {
                if let Some(errors) = m["payload"].get("errors") {
                    return Err(errors.clone());
                }
                events.push(m["payload"]["data"]["executionEvents"].clone());
            }
            WsEvent::Json(m) if m["type"] == "complete" => return Ok(events),
            WsEvent::Json(m) if m["type"] == "error" => return Err(m["payload"].clone()),
            other => panic!("unexpected {other:?}"),
        }
    }
}

pub(crate) fn sequences(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap())
        .collect()
}

pub(crate) fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

pub(crate) fn text(events: &[Value]) -> String {
    events.iter().filter_map(|e| e["delta"].as_str()).collect()
}

pub(crate) fn slow(tokens: &[&str], per_token_ms: u64) -> StreamScript {
    StreamScript {
        tokens: tokens.iter().map(|t| t.to_string()).collect(),
        delay_per_token: Duration::from_millis(per_token_ms),
        ..StreamScript::default()
    }
}

#[tokio::test]
async fn a_run_streams_every_token_in_order_over_a_websocket_and_is_kept() {
    let w = world().await;
    let tokens = [
        "Once",
        " upon",
        " a",
        " time",
        ",",
        " tokens",
        " streamed",
        ".",
    ];
    w.fake.set_stream(StreamScript {
        input_tokens: 1200,
        output_tokens: 800,
        ..slow(&tokens, 30)
    });
    let body = w.execute("Tell me a story").await;
    let run = &body["data"]["executeAgent"];
    assert_eq!(run["status"], "QUEUED", "{body}");
    let id = run["id"].as_str().unwrap().to_owned();

    let events = subscribe(&w.app, &w.user.access, &id, None)
        .await
        .expect("subscription");
    let n = events.len() as i64;
    assert_eq!(
        sequences(&events),
        (1..=n).collect::<Vec<_>>(),
        "gap or duplicate"
    );
    let kinds = kinds(&events);
    assert_eq!(kinds.first().map(String::as_str), Some("STARTED"));
    assert_eq!(kinds[kinds.len() - 2], "USAGE");
    assert_eq!(kinds.last().map(String::as_str), Some("COMPLETED"));
    assert!(
        kinds.iter().filter(|k| *k == "OUTPUT_DELTA").count() >= 2,
        "deltas should arrive as they stream: {kinds:?}"
    );
    assert_eq!(text(&events), tokens.concat());
    assert_eq!(events[0]["executionId"], id.as_str());

    let usage = &events[events.len() - 2]["data"];
    assert_eq!(
        (
            usage["inputTokens"].as_i64(),
            usage["outputTokens"].as_i64()
        ),
        (Some(1200), Some(800))
    );
    // gpt-4o-mini: 1200 × $0.15/M + 800 × $0.60/M = $0.00018 + $0.00048 = $0.00066.
    assert_eq!(usage["costUsd"].as_f64(), Some(0.00066));

    let stored = w.finished(&id).await;
    assert_eq!(stored["status"], "SUCCEEDED");
    assert_eq!(stored["output"], tokens.concat());
    assert_eq!(
        (
            stored["inputTokens"].as_i64(),
            stored["outputTokens"].as_i64()
        ),
        (Some(1200), Some(800))
    );
    assert_eq!(stored["costUsd"].as_f64(), Some(0.00066));
    assert_eq!(stored["costEstimated"], false);
    assert!(stored["startedAt"].is_string() && stored["finishedAt"].is_string());

    // The provider got the documented request, with the prompt built from the agent.
    let request = w
        .fake
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/chat/completions")
        .expect("chat request");
    assert_eq!(request.body["stream"], true);
    assert_eq!(request.body["stream_options"]["include_usage"], true);
    assert_eq!(request.body["model"], "gpt-4o-mini");
    let system = request.body["messages"][0]["content"].as_str().unwrap();
    assert!(
        system.contains("a helpful assistant")
            && system.contains("answer briefly")
            && system.contains("haiku"),
        "{system}"
    );
    assert_eq!(request.body["messages"][1]["content"], "Tell me a story");

    // The key's usage and lastUsedAt follow.
    let key = w
        .app
        .gql_as(
            Some(&w.user.access),
            "query($id: ID!) { apiKey(id: $id) { lastUsedAt usage { executions inputTokens outputTokens costUsd } } }",
            json!({"id": w.key_id}),
        )
        .await;
    let usage = &key["data"]["apiKey"]["usage"];
    assert_eq!(usage["executions"], 1, "{key}");
    assert_eq!(usage["inputTokens"], 1200);
    assert_eq!(usage["costUsd"].as_f64(), Some(0.00066));
    assert!(key["data"]["apiKey"]["lastUsedAt"].is_string());
}

#[tokio::test]
async fn anthropic_runs_stream_through_pings_with_usage() {
    let w = world_with("ANTHROPIC", "claude-sonnet-4-20250514", |_| {}).await;
    w.fake.set_stream(StreamScript {
        pings: true,
        input_tokens: 1000,
        output_tokens: 100,
        ..slow(&["Bonjour", " le", " monde"], 10)
    });
    let id = w.start("Say hello in French").await;
    let events = subscribe(&w.app, &w.user.access, &id, None)
        .await
        .expect("subscription");
    assert_eq!(text(&events), "Bonjour le monde");
    assert_eq!(kinds(&events).last().map(String::as_str), Some("COMPLETED"));
    let stored = w.finished(&id).await;
    // claude-sonnet-4: 1000 × $3/M + 100 × $15/M = $0.003 + $0.0015.
    assert_eq!(stored["costUsd"].as_f64(), Some(0.0045), "{stored}");
    let request = w
        .fake
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/messages")
        .expect("messages request");
    assert_eq!(request.body["max_tokens"], 256);
    assert!(
        request.body["system"]
            .as_str()
            .unwrap()
            .contains("a helpful assistant")
    );
    assert_eq!(request.header("anthropic-version"), Some("2023-06-01"));
}

#[tokio::test]
async fn a_late_subscriber_gets_the_full_replay_and_completion() {
    let w = world().await;
    w.fake.set_stream(slow(&["a", "b", "c"], 0));
    let id = w.start("go").await;
    w.finished(&id).await;
    let events = subscribe(&w.app, &w.user.access, &id, None)
        .await
        .expect("replay");
    assert_eq!(text(&events), "abc");
    assert_eq!(kinds(&events).first().map(String::as_str), Some("STARTED"));
    assert_eq!(kinds(&events).last().map(String::as_str), Some("COMPLETED"));
    let stored = w.events(&id).await;
    assert_eq!(sequences(&events), sequences(&stored));
    assert_eq!(kinds(&events), kinds(&stored));
}

#[tokio::test]
async fn resuming_after_a_sequence_has_no_gap_and_no_duplicate() {
    let w = world().await;
    w.fake.set_stream(slow(
        &["one", " two", " three", " four", " five", " six"],
        40,
    ));
    let id = w.start("count").await;
    // Read the first events live, then "reconnect" with after = the last one seen.
    let first = {
        let mut ws = w.app.ws("graphql-transport-ws", None).await.unwrap();
        ws.init(json!({"Authorization": format!("Bearer {}", w.user.access)}))
            .await;
        ws.send(json!({"id": "a", "type": "subscribe", "payload": {"query": "subscription($id: ID!) { executionEvents(executionId: $id) { sequence kind delta } }", "variables": {"id": id}}})).await;
        let mut got = Vec::new();
        while got.len() < 3 {
            if let WsEvent::Json(m) = ws.next(10).await
                && m["type"] == "next"
            {
                got.push(m["payload"]["data"]["executionEvents"].clone());
            }
        }
        got
    };
    let last_seen = first.last().unwrap()["sequence"].as_i64().unwrap() as i32;
    let rest = subscribe(&w.app, &w.user.access, &id, Some(last_seen))
        .await
        .expect("resume");
    let mut all = first.clone();
    all.extend(rest);
    let n = all.len() as i64;
    assert_eq!(sequences(&all), (1..=n).collect::<Vec<_>>());
    assert_eq!(text(&all), "one two three four five six");
}

#[tokio::test]
async fn two_instances_serve_each_others_subscribers() {
    let w = world().await;
    let sibling = w.app.sibling().await;
    w.fake
        .set_stream(slow(&["cross", "-", "process", " ", "wake"], 50));
    // Subscribe on the sibling first, then run on the first instance.
    let id = w.start("hello").await;
    let events = subscribe(&sibling, &w.user.access, &id, None)
        .await
        .expect("subscription on the sibling");
    let n = events.len() as i64;
    assert_eq!(sequences(&events), (1..=n).collect::<Vec<_>>());
    assert_eq!(text(&events), "cross-process wake");
    assert_eq!(kinds(&events).last().map(String::as_str), Some("COMPLETED"));
}

#[tokio::test]
async fn execution_updates_report_status_changes_of_the_viewers_runs() {
    let w = world().await;
    w.fake.set_stream(slow(&["x"], 100));
    let mut ws = w.app.ws("graphql-transport-ws", None).await.unwrap();
    ws.init(json!({"Authorization": format!("Bearer {}", w.user.access)}))
        .await;
    ws.send(json!({"id": "u", "type": "subscribe", "payload": {"query": "subscription { executionUpdates { id status } }"}})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = w.start("watch me").await;
    let mut statuses = Vec::new();
    while statuses.last().map(String::as_str) != Some("SUCCEEDED") {
        match ws.next(10).await {
            WsEvent::Json(m) if m["type"] == "next" => {
                let update = &m["payload"]["data"]["executionUpdates"];
                assert_eq!(update["id"], id.as_str());
                statuses.push(update["status"].as_str().unwrap().to_owned());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(statuses.contains(&"RUNNING".to_owned()), "{statuses:?}");
}

#[tokio::test]
async fn cancelling_mid_stream_stops_the_upstream_request_and_keeps_the_partial_output() {
    let w = world().await;
    let tokens: Vec<String> = (0..200).map(|i| format!("t{i} ")).collect();
    w.fake.set_stream(StreamScript {
        tokens: tokens.clone(),
        delay_per_token: Duration::from_millis(20),
        ..StreamScript::default()
    });
    let id = w.start("long story").await;
    // Wait for some output to be stored.
    for _ in 0..100 {
        if !w.execution(&id).await["output"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = std::time::Instant::now();
    let body = w
        .app
        .gql_as(
            Some(&w.user.access),
            &format!("mutation($id: ID!) {{ cancelExecution(id: $id) {{ {EXECUTION} }} }}"),
            json!({"id": id}),
        )
        .await;
    let cancelled = &body["data"]["cancelExecution"];
    assert_eq!(cancelled["status"], "CANCELLED", "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "cancel took {:?}",
        started.elapsed()
    );
    let output = cancelled["output"].as_str().unwrap().to_owned();
    assert!(
        !output.is_empty() && output.len() < tokens.concat().len(),
        "partial output kept: {output:?}"
    );
    assert!(tokens.concat().starts_with(&output));
    // The provider saw the client go away, and sends nothing more.
    let mut disconnected = false;
    for _ in 0..50 {
        if w.fake.client_disconnects() >= 1 {
            disconnected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(disconnected, "the upstream request was not aborted");
    let sent = w.fake.chunks_sent();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        w.fake.chunks_sent(),
        sent,
        "tokens kept flowing after cancel"
    );
    let events = w.events(&id).await;
    assert_eq!(kinds(&events).last().map(String::as_str), Some("CANCELLED"));
    assert_eq!(text(&events), output);
    assert!(
        cancelled["outputTokens"].as_i64().unwrap() > 0,
        "tokens so far are recorded"
    );
    // Cancelling a finished run changes nothing.
    let again = w
        .app
        .gql_as(
            Some(&w.user.access),
            "mutation($id: ID!) { cancelExecution(id: $id) { status output } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(again["data"]["cancelExecution"]["status"], "CANCELLED");
    assert_eq!(again["data"]["cancelExecution"]["output"], output.as_str());
}

#[tokio::test]
async fn a_cancel_sent_to_another_instance_reaches_the_runner() {
    let w = world().await;
    let sibling = w.app.sibling().await;
    w.fake.set_stream(slow(&["a"; 100], 20));
    let id = w.start("long").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let body = sibling
        .gql_as(
            Some(&w.user.access),
            "mutation($id: ID!) { cancelExecution(id: $id) { status } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(
        body["data"]["cancelExecution"]["status"], "CANCELLED",
        "{body}"
    );
}

async fn failure(w: &World) -> (Value, Vec<Value>) {
    let id = w.start("hi").await;
    let run = w.finished(&id).await;
    let events = w.events(&id).await;
    (run, events)
}

#[tokio::test]
async fn provider_failures_end_the_run_failed_with_a_readable_error() {
    let w = world().await;
    let cases: Vec<(Mode, Option<StreamScript>, &str)> = vec![
        (
            Mode::Status {
                status: 401,
                retry_after_secs: None,
            },
            None,
            "rejected the API key",
        ),
        (
            Mode::Status {
                status: 500,
                retry_after_secs: None,
            },
            None,
            "unavailable",
        ),
        (
            Mode::Status {
                status: 429,
                retry_after_secs: Some(0),
            },
            None,
            "rate-limiting",
        ),
        (
            Mode::Normal,
            Some(StreamScript {
                error_after: Some(1),
                ..StreamScript::default()
            }),
            "mid-stream",
        ),
        (
            Mode::Normal,
            Some(StreamScript {
                malformed_after: Some(1),
                ..StreamScript::default()
            }),
            "malformed",
        ),
        (Mode::Delay(Duration::from_secs(5)), None, "did not answer"),
    ];
    for (mode, script, expected) in cases {
        w.fake.set_mode(mode);
        w.fake.set_stream(script.unwrap_or_default());
        let (run, events) = failure(&w).await;
        assert_eq!(run["status"], "FAILED", "{expected}: {run}");
        let error = run["error"].as_str().unwrap();
        assert!(
            error.contains(expected),
            "expected `{expected}` in `{error}`"
        );
        assert!(!error.contains(OPENAI_KEY));
        assert_eq!(kinds(&events).last().map(String::as_str), Some("FAILED"));
        assert_eq!(events.last().unwrap()["data"]["error"], error);
        let n = events.len() as i64;
        assert_eq!(sequences(&events), (1..=n).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn server_errors_before_any_token_are_retried() {
    let w = world().await;
    w.fake.set_mode(Mode::FailTimes {
        status: 503,
        times: 2,
    });
    w.fake.set_stream(slow(&["ok"], 0));
    let id = w.start("retry please").await;
    let run = w.finished(&id).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    assert_eq!(run["output"], "ok");
    let attempts = w
        .fake
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .count();
    assert_eq!(attempts, 3);
}

#[tokio::test]
async fn a_run_over_its_time_limit_ends_timed_out() {
    let w = world_with("OPENAI", "gpt-4o-mini", |c| c.execution_timeout_secs = 1).await;
    w.fake.set_stream(slow(&["slow"; 100], 50));
    let id = w.start("take your time").await;
    let run = w.finished(&id).await;
    assert_eq!(run["status"], "TIMED_OUT", "{run}");
    assert!(
        !run["output"].as_str().unwrap().is_empty(),
        "output so far is kept"
    );
    let events = w.events(&id).await;
    assert_eq!(kinds(&events).last().map(String::as_str), Some("TIMED_OUT"));
}

#[tokio::test]
async fn a_provider_without_usage_gets_estimated_tokens_and_cost() {
    let w = world().await;
    w.fake.set_stream(StreamScript {
        report_usage: false,
        ..slow(&["twelve chars"], 0)
    });
    let id = w.start("estimate me").await;
    let run = w.finished(&id).await;
    assert_eq!(run["status"], "SUCCEEDED");
    assert_eq!(run["costEstimated"], true, "{run}");
    assert_eq!(run["outputTokens"], 3);
    assert!(run["inputTokens"].as_i64().unwrap() > 0);
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_same_run() {
    let w = world().await;
    w.fake.set_stream(slow(&["once"], 0));
    let run = |input: &'static str| {
        let (app, token, agent) = (&w.app, w.user.access.clone(), w.agent_id.clone());
        async move {
            app.gql_as(
                Some(&token),
                "mutation($a: ID!, $i: String!) { executeAgent(agentId: $a, input: $i, idempotencyKey: \"order-42\") { id } }",
                json!({"a": agent, "i": input}),
            )
            .await
        }
    };
    let first = run("same input").await;
    let second = run("same input").await;
    assert_eq!(
        first["data"]["executeAgent"]["id"], second["data"]["executeAgent"]["id"],
        "{first} {second}"
    );
    let different = run("other input").await;
    assert_eq!(code(&different), "CONFLICT", "{different}");
    w.finished(first["data"]["executeAgent"]["id"].as_str().unwrap())
        .await;
    assert_eq!(w.app.count("SELECT count(*) FROM executions").await, 1);
    assert_eq!(
        w.fake
            .requests()
            .iter()
            .filter(|r| r.path == "/v1/chat/completions")
            .count(),
        1
    );
}

#[tokio::test]
async fn the_concurrency_cap_refuses_extra_runs_until_one_finishes() {
    let w = world_with("OPENAI", "gpt-4o-mini", |c| c.max_concurrent_executions = 2).await;
    w.fake.set_stream(slow(&["z"; 20], 20));
    let a = w.start("one").await;
    w.start("two").await;
    let third = w.execute("three").await;
    assert_eq!(code(&third), "RATE_LIMITED", "{third}");
    assert!(
        third["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("runs in progress")
    );
    assert_eq!(w.app.count("SELECT count(*) FROM executions").await, 2);
    w.finished(&a).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let fourth = w.execute("four").await;
    assert!(fourth["data"]["executeAgent"]["id"].is_string(), "{fourth}");
}

#[tokio::test]
async fn a_run_whose_process_died_is_failed_by_a_live_instance() {
    let w = world().await;
    // A run left RUNNING by a process that is gone: heartbeat long past.
    w.app
        .sql(&format!(
            "INSERT INTO executions (id, user_id, agent_id, api_key_id, provider, model, status, input, output, last_sequence, heartbeat_at, started_at) \
             VALUES ('{}', '{}', '{}', '{}', 'OPENAI', 'gpt-4o-mini', 'RUNNING', 'orphan', 'partial', 2, now() - interval '1 hour', now() - interval '1 hour'); \
             INSERT INTO execution_events (execution_id, sequence, kind, data) SELECT id, 1, 'STARTED', '{{}}' FROM executions WHERE input = 'orphan'; \
             INSERT INTO execution_events (execution_id, sequence, kind, delta) SELECT id, 2, 'OUTPUT_DELTA', 'partial' FROM executions WHERE input = 'orphan';",
            uuid::Uuid::now_v7(),
            w.user.user_id,
            w.agent_id,
            w.key_id
        ))
        .await;
    let id: String = w
        .app
        .db()
        .await
        .query_one(
            "SELECT id::text FROM executions WHERE input = 'orphan'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // A subscriber waiting on it is released by the recovery with a terminal event.
    let events = subscribe(&w.app, &w.user.access, &id, None)
        .await
        .expect("subscription");
    assert_eq!(sequences(&events), vec![1, 2, 3]);
    assert_eq!(kinds(&events).last().map(String::as_str), Some("FAILED"));
    let run = w.execution(&id).await;
    assert_eq!(run["status"], "FAILED");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("stopped before it finished")
    );
    assert_eq!(run["output"], "partial");
}

#[tokio::test]
async fn runs_are_listed_newest_first_and_filtered() {
    let w = world().await;
    w.fake.set_stream(slow(&["r"], 0));
    let mut ids = Vec::new();
    for i in 0..3 {
        let id = w.start(&format!("run {i}")).await;
        w.finished(&id).await;
        ids.push(id);
    }
    w.fake.set_mode(Mode::Status {
        status: 401,
        retry_after_secs: None,
    });
    let failed = w.start("fails").await;
    w.finished(&failed).await;
    let list = |vars: Value| {
        w.app.gql_as(
            Some(&w.user.access),
            "query($a: ID, $s: ExecutionStatus, $f: Int, $after: String) { executions(agentId: $a, status: $s, first: $f, after: $after) { edges { node { id status agent { id name } } } pageInfo { hasNextPage endCursor } } }",
            vars,
        )
    };
    let body = list(json!({"f": 2})).await;
    let page: Vec<&str> = body["data"]["executions"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(page, [failed.as_str(), ids[2].as_str()], "{body}");
    assert_eq!(
        body["data"]["executions"]["edges"][0]["node"]["agent"]["name"],
        "Helper"
    );
    let next =
        list(json!({"f": 2, "after": body["data"]["executions"]["pageInfo"]["endCursor"]})).await;
    let page: Vec<&str> = next["data"]["executions"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(page, [ids[1].as_str(), ids[0].as_str()]);
    assert_eq!(next["data"]["executions"]["pageInfo"]["hasNextPage"], false);
    let only_failed = list(json!({"s": "FAILED", "a": w.agent_id})).await;
    assert_eq!(
        only_failed["data"]["executions"]["edges"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let bad = list(json!({"a": "nope"})).await;
    assert_eq!((code(&bad), field(&bad)), ("BAD_USER_INPUT", "agentId"));
}

#[tokio::test]
async fn another_users_run_is_not_found_for_every_operation_and_subscription() {
    let w = world().await;
    w.fake.set_stream(slow(&["secret"], 0));
    let id = w.start("private").await;
    w.finished(&id).await;
    let mallory = w.app.register("mallory@example.com").await;
    let get = w
        .app
        .gql_as(
            Some(&mallory.access),
            "query($id: ID!) { execution(id: $id) { id output } }",
            json!({"id": id}),
        )
        .await;
    assert!(get["data"]["execution"].is_null(), "{get}");
    let cancel = w
        .app
        .gql_as(
            Some(&mallory.access),
            "mutation($id: ID!) { cancelExecution(id: $id) { id } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(code(&cancel), "NOT_FOUND");
    let run = w
        .app
        .gql_as(
            Some(&mallory.access),
            "mutation($a: ID!) { executeAgent(agentId: $a, input: \"x\") { id } }",
            json!({"a": w.agent_id}),
        )
        .await;
    assert_eq!(code(&run), "NOT_FOUND", "{run}");
    let list = w
        .app
        .gql_as(
            Some(&mallory.access),
            "{ executions { edges { node { id } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        list["data"]["executions"]["edges"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let errors = subscribe(&w.app, &mallory.access, &id, None)
        .await
        .expect_err("refused");
    assert_eq!(errors[0]["extensions"]["code"], "NOT_FOUND", "{errors}");
    assert!(!errors.to_string().contains("secret"));
}

#[tokio::test]
async fn bad_run_input_is_named_and_starts_nothing() {
    let w = world().await;
    for (agent, input, expected_code, expected_field) in [
        (
            w.agent_id.clone(),
            "   ".to_owned(),
            "BAD_USER_INPUT",
            Some("input"),
        ),
        (
            w.agent_id.clone(),
            "x".repeat(32_001),
            "BAD_USER_INPUT",
            Some("input"),
        ),
        (
            "not-an-id".to_owned(),
            "hi".to_owned(),
            "BAD_USER_INPUT",
            Some("agentId"),
        ),
        (
            uuid::Uuid::now_v7().to_string(),
            "hi".to_owned(),
            "NOT_FOUND",
            None,
        ),
    ] {
        let body = w
            .app
            .gql_as(
                Some(&w.user.access),
                "mutation($a: ID!, $i: String!) { executeAgent(agentId: $a, input: $i) { id } }",
                json!({"a": agent, "i": input}),
            )
            .await;
        assert_eq!(code(&body), expected_code, "{body}");
        if let Some(f) = expected_field {
            assert_eq!(field(&body), f);
        }
    }
    // An inactive agent or key cannot run.
    w.app
        .gql_as(
            Some(&w.user.access),
            "mutation($id: ID!) { setApiKeyActive(id: $id, active: false) { id } }",
            json!({"id": w.key_id}),
        )
        .await;
    let body = w.execute("hi").await;
    assert_eq!(
        (code(&body), field(&body)),
        ("BAD_USER_INPUT", "agentId"),
        "{body}"
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("inactive")
    );
    w.app
        .gql_as(
            Some(&w.user.access),
            "mutation($id: ID!) { setApiKeyActive(id: $id, active: true) { id } }",
            json!({"id": w.key_id}),
        )
        .await;
    w.app
        .gql_as(
            Some(&w.user.access),
            "mutation($id: ID!) { setAgentActive(id: $id, active: false) { id } }",
            json!({"id": w.agent_id}),
        )
        .await;
    let body = w.execute("hi").await;
    assert_eq!(
        (code(&body), field(&body)),
        ("BAD_USER_INPUT", "agentId"),
        "{body}"
    );
    assert_eq!(w.app.count("SELECT count(*) FROM executions").await, 0);
    assert!(w.fake.requests().is_empty());
}

#[tokio::test]
async fn statements_per_request_do_not_grow_with_the_number_of_agents() {
    // No background recovery pass may land inside a measurement (heartbeats far apart), and an
    // unoptimised test build needs a wider batching window to gather 50 nodes in one batch.
    let w = world_with("OPENAI", "gpt-4o-mini", |c| {
        c.execution_heartbeat_secs = 3600;
        c.dataloader_delay_ms = 20;
    })
    .await;
    w.fake.set_stream(slow(&["s"], 0));
    // 50 agents, each with two runs.
    for i in 0..49 {
        w.app
            .gql_as(
                Some(&w.user.access),
                "mutation($i: CreateAgentInput!) { createAgent(input: $i) { id } }",
                json!({"i": {"name": format!("agent {i}"), "role": "r", "goal": "g", "apiKeyId": w.key_id, "model": "gpt-4o-mini"}}),
            )
            .await;
    }
    w.app
        .sql(&format!(
            "INSERT INTO executions (id, user_id, agent_id, api_key_id, provider, model, status, input) \
             SELECT gen_random_uuid(), user_id, id, api_key_id, 'OPENAI', model, 'SUCCEEDED', 'seed' FROM agents, generate_series(1, 2) WHERE user_id = '{}'",
            w.user.user_id
        ))
        .await;
    let query = |n: i32| {
        format!(
            "{{ agents(first: {n}) {{ edges {{ node {{ id name provider apiKey {{ id name maskedKey usage {{ executions costUsd }} }} executions(first: 5) {{ edges {{ node {{ id status agent {{ name }} }} }} }} }} }} }} }}"
        )
    };
    let count = |n: i32| {
        let (app, token, q) = (&w.app, w.user.access.clone(), query(n));
        async move {
            let before = app.state.query_counter.get();
            let body = app.gql_as(Some(&token), &q, json!({})).await;
            let after = app.state.query_counter.get();
            let edges = body["data"]["agents"]["edges"]
                .as_array()
                .unwrap_or_else(|| panic!("{body}"))
                .len();
            assert_eq!(edges, n as usize);
            assert_eq!(
                body["data"]["agents"]["edges"][0]["node"]["executions"]["edges"]
                    .as_array()
                    .unwrap()
                    .len(),
                2
            );
            after - before
        }
    };
    let one = count(1).await;
    let fifty = count(50).await;
    assert_eq!(one, fifty, "statements for 1 agent: {one}, for 50: {fifty}");
    assert!(fifty <= 8, "{fifty} statements");
}
