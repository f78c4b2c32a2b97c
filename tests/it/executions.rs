//! Runs end to end: executeAgent against local fake OpenAI and Anthropic servers, events
//! streamed over a real graphql-transport-ws WebSocket, replay and resume, two server instances
//! on one database, cancellation, provider failures, idempotency, the concurrency cap, timeouts,
//! recovery, usage and cost, and isolation.

mod failures;
mod listing;

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
    /// Runs a query as the world's user; returns the JSON body.
    pub(crate) async fn ask(&self, query: &str, variables: Value) -> Value {
        self.app
            .gql_as(Some(&self.user.access), query, variables)
            .await
    }

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
                "query($id: ID!) { execution(id: $id) { events(first: 1000) { sequence kind delta data at } } }",
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
    subscribe_to(
        app,
        token,
        "subscription($id: ID!, $after: Int) { executionEvents(executionId: $id, after: $after) { executionId sequence kind delta data at } }",
        json!({"id": id, "after": after}),
        "executionEvents",
    )
    .await
}

/// Runs one subscription over graphql-transport-ws and collects `data.<field>` of each item
/// until `complete`; the errors of an item or of the operation instead.
pub(crate) async fn subscribe_to(
    app: &TestApp,
    token: &str,
    query: &str,
    variables: Value,
    field: &str,
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
        "payload": {"query": query, "variables": variables}
    }))
    .await;
    let mut items = Vec::new();
    loop {
        match ws.next(15).await {
            WsEvent::Json(m) if m["type"] == "next" => {
                if let Some(errors) = m["payload"].get("errors") {
                    return Err(errors.clone());
                }
                items.push(m["payload"]["data"][field].clone());
            }
            WsEvent::Json(m) if m["type"] == "complete" => return Ok(items),
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

    // What was seen live is what the history keeps, `at` included (to the microsecond).
    let fields = |e: &Value| json!([e["sequence"], e["kind"], e["delta"], e["data"], e["at"]]);
    let kept: Vec<Value> = w.events(&id).await.iter().map(fields).collect();
    assert_eq!(events.iter().map(fields).collect::<Vec<_>>(), kept);

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
