//! A real JavaScript GraphQL client against the server: the npm package `graphql-ws` under Node,
//! with `ws` as its WebSocket, subscribes to a run of an agent over `graphql-transport-ws` and
//! must receive every streamed event (tests/js/subscribe.mjs; packages pinned in tests/js).
//!
//! Needs `node` (20+) and `npm` on PATH; the packages are installed with `npm ci` on first use
//! (tests/it/common/node.rs).

use crate::common;

use std::{
    process::{ExitStatus, Stdio},
    time::Duration,
};

use common::{
    Session, TestApp,
    fake_provider::{FakeProvider, StreamScript},
    id_at,
    node::{ensure_ready, js_dir},
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const OPENAI_KEY: &str = "sk-proj-abcdefghijklmnop1234";
const TOKENS: [&str; 5] = ["The", " quick", " brown", " fox", " jumps"];
/// Pause before each token at the fake provider, so the run is still streaming while the Node
/// client starts, connects and subscribes.
const DELAY_PER_TOKEN: Duration = Duration::from_millis(200);
/// The script exits 2 after 20 s; this only guards against a Node process that never ends.
const NODE_GUARD: Duration = Duration::from_secs(40);
const TERMINAL: [&str; 4] = ["COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"];

/// What one run of subscribe.mjs did.
#[derive(Debug)]
struct NodeRun {
    status: ExitStatus,
    /// The event lines, parsed.
    events: Vec<Value>,
    /// Whether the last line was `COMPLETE`.
    complete: bool,
    stdout: String,
    stderr: String,
}

impl NodeRun {
    fn sequences(&self) -> Vec<i64> {
        self.events
            .iter()
            .map(|e| e["sequence"].as_i64().expect("integer sequence"))
            .collect()
    }

    fn kinds(&self) -> Vec<&str> {
        self.events
            .iter()
            .map(|e| e["kind"].as_str().expect("kind"))
            .collect()
    }
}

/// Runs `node subscribe.mjs ws://addr/graphql token execution_id [after]`; `on_first_event` is
/// awaited when the first event line arrives (while Node is still subscribed).
async fn subscribe<F, Fut>(
    app: &TestApp,
    token: &str,
    execution_id: &str,
    after: Option<i32>,
    on_first_event: F,
) -> NodeRun
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    ensure_ready().await;
    let mut command = tokio::process::Command::new("node");
    command
        .arg("subscribe.mjs")
        .arg(format!("ws://{}/graphql", app.addr))
        .arg(token)
        .arg(execution_id);
    if let Some(after) = after {
        command.arg(after.to_string());
    }
    let mut child = command
        .current_dir(js_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start node subscribe.mjs");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stderr_pipe = child.stderr.take().expect("stderr");
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text).await;
        text
    });
    let run = async {
        let mut lines = Vec::new();
        let mut on_first_event = Some(on_first_event);
        while let Some(line) = stdout.next_line().await.expect("read node stdout") {
            if line.starts_with('{')
                && let Some(callback) = on_first_event.take()
            {
                callback().await;
            }
            lines.push(line);
        }
        let status = child.wait().await.expect("wait for node");
        (lines, status)
    };
    let (lines, status) = tokio::time::timeout(NODE_GUARD, run)
        .await
        .unwrap_or_else(|_| panic!("node subscribe.mjs still running after {NODE_GUARD:?}"));
    let stderr = stderr.await.expect("stderr reader");
    let complete = lines.last().is_some_and(|l| l == "COMPLETE");
    let events = lines
        .iter()
        .filter(|l| *l != "COMPLETE")
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not an event line {l:?}: {e}")))
        .collect();
    NodeRun {
        status,
        events,
        complete,
        stdout: lines.join("\n"),
        stderr,
    }
}

/// A server whose OpenAI base URL points at a fake provider streaming `TOKENS`, a user with an
/// OpenAI key the fake accepts, and an agent using it; returns the agent's id.
async fn app_with_agent() -> (TestApp, FakeProvider, Session, String) {
    // Install first: a first `npm ci` takes seconds, longer than a run streams.
    ensure_ready().await;
    let fake = FakeProvider::start().await;
    fake.accept_key(OPENAI_KEY);
    fake.set_stream(StreamScript {
        tokens: TOKENS.map(String::from).to_vec(),
        delay_per_token: DELAY_PER_TOKEN,
        ..StreamScript::default()
    });
    let app = TestApp::spawn_with(|c| fake.serve_all_providers(c)).await;
    let user = app.register("js-client@example.com").await;
    let body = app
        .gql_as(
            Some(&user.access),
            "mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) { id } }",
            json!({ "input": { "name": "OpenAI", "provider": "OPENAI", "secret": OPENAI_KEY } }),
        )
        .await;
    let key_id = id_at(&body, &["createApiKey"]);
    let body = app
        .gql_as(
            Some(&user.access),
            "mutation($input: CreateAgentInput!) { createAgent(input: $input) { id } }",
            json!({ "input": {
                "name": "Typist",
                "role": "a fast typist",
                "goal": "type the sentence you are given",
                "apiKeyId": key_id,
                "model": "gpt-4o-mini",
            } }),
        )
        .await;
    let agent_id = id_at(&body, &["createAgent"]);
    (app, fake, user, agent_id)
}

/// Starts a run of the agent; returns its id.
async fn execute(app: &TestApp, user: &Session, agent_id: &str) -> String {
    let body = app
        .gql_as(
            Some(&user.access),
            "mutation($agent: ID!, $input: String!) {
                executeAgent(agentId: $agent, input: $input) { id status } }",
            json!({ "agent": agent_id, "input": "Type: the quick brown fox jumps" }),
        )
        .await;
    id_at(&body, &["executeAgent"])
}

async fn status(app: &TestApp, user: &Session, execution_id: &str) -> String {
    let body = app
        .gql_as(
            Some(&user.access),
            "query($id: ID!) { execution(id: $id) { status } }",
            json!({ "id": execution_id }),
        )
        .await;
    body["data"]["execution"]["status"]
        .as_str()
        .unwrap_or_else(|| panic!("execution query failed: {body}"))
        .to_owned()
}

/// Polls until the run has ended; returns its final status.
async fn wait_until_finished(app: &TestApp, user: &Session, execution_id: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = status(app, user, execution_id).await;
        if !matches!(status.as_str(), "QUEUED" | "RUNNING") {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run {execution_id} still {status} after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts the run's event lines form 1..=N (or after+1..=N) without gap or duplicate.
fn assert_contiguous(run: &NodeRun, first: i64) {
    let sequences = run.sequences();
    let expected: Vec<i64> = (first..first + sequences.len() as i64).collect();
    assert_eq!(
        sequences, expected,
        "sequences are not contiguous from {first}: {run:#?}"
    );
}

fn assert_success(run: &NodeRun) {
    assert!(
        run.status.success(),
        "node subscribe.mjs failed ({}): stderr {:?}, stdout {:?}",
        run.status,
        run.stderr,
        run.stdout
    );
    assert!(run.complete, "no COMPLETE line: {run:#?}");
}

#[tokio::test]
async fn graphql_ws_from_npm_receives_every_event_of_a_run() {
    let (app, _fake, user, agent_id) = app_with_agent().await;
    let execution_id = execute(&app, &user, &agent_id).await;
    let mut status_at_first_event = None;
    let slot = &mut status_at_first_event;
    let (app_ref, user_ref, id_ref) = (&app, &user, execution_id.as_str());
    let run = subscribe(
        &app,
        &user.access,
        &execution_id,
        None,
        move || async move {
            *slot = Some(status(app_ref, user_ref, id_ref).await);
        },
    )
    .await;

    assert_success(&run);
    assert_contiguous(&run, 1);
    let kinds = run.kinds();
    assert_eq!(kinds.first(), Some(&"STARTED"), "{run:#?}");
    assert_eq!(kinds.last(), Some(&"COMPLETED"), "{run:#?}");
    assert!(kinds.contains(&"USAGE"), "no USAGE event: {run:#?}");
    assert_eq!(
        kinds.iter().filter(|k| TERMINAL.contains(k)).count(),
        1,
        "exactly one terminal event: {run:#?}"
    );
    let output: String = run
        .events
        .iter()
        .filter(|e| e["kind"] == "OUTPUT_DELTA")
        .map(|e| e["delta"].as_str().expect("OUTPUT_DELTA has a delta"))
        .collect();
    assert_eq!(output, TOKENS.concat(), "{run:#?}");

    // The client was subscribed while the run streamed, not replaying a finished log.
    let status_at_first_event = status_at_first_event.expect("an event arrived");
    assert!(
        matches!(status_at_first_event.as_str(), "QUEUED" | "RUNNING"),
        "the run was already {status_at_first_event} when the first event reached Node"
    );
    // The log holds exactly what Node received.
    assert_eq!(
        wait_until_finished(&app, &user, &execution_id).await,
        "SUCCEEDED"
    );
    let body = app
        .gql_as(
            Some(&user.access),
            "query($id: ID!) { execution(id: $id) { output events { sequence } } }",
            json!({ "id": execution_id }),
        )
        .await;
    assert_eq!(
        body["data"]["execution"]["output"],
        TOKENS.concat(),
        "{body}"
    );
    let stored = body["data"]["execution"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("events: {body}"))
        .len();
    assert_eq!(stored, run.events.len(), "{body}");
}

#[tokio::test]
async fn graphql_ws_from_npm_resumes_after_a_sequence() {
    let (app, _fake, user, agent_id) = app_with_agent().await;
    let execution_id = execute(&app, &user, &agent_id).await;
    assert_eq!(
        wait_until_finished(&app, &user, &execution_id).await,
        "SUCCEEDED"
    );
    let body = app
        .gql_as(
            Some(&user.access),
            "query($id: ID!) { execution(id: $id) { events { sequence kind } } }",
            json!({ "id": execution_id }),
        )
        .await;
    let stored = body["data"]["execution"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("events: {body}"))
        .clone();
    let last_stored = stored.last().expect("stored events");

    let run = subscribe(&app, &user.access, &execution_id, Some(2), || async {}).await;

    assert_success(&run);
    assert_eq!(run.sequences().first(), Some(&3), "{run:#?}");
    assert_contiguous(&run, 3);
    assert_eq!(
        run.sequences().last(),
        last_stored["sequence"].as_i64().as_ref()
    );
    assert_eq!(run.kinds().last(), Some(&"COMPLETED"), "{run:#?}");
    assert_eq!(run.events.len() + 2, stored.len(), "{run:#?}");
}

#[tokio::test]
async fn graphql_ws_from_npm_is_refused_without_a_valid_token() {
    let (app, _fake, user, agent_id) = app_with_agent().await;
    let execution_id = execute(&app, &user, &agent_id).await;

    let run = subscribe(
        &app,
        "not-a-valid-access-token",
        &execution_id,
        None,
        || async {},
    )
    .await;

    assert_eq!(run.status.code(), Some(1), "{run:#?}");
    assert!(
        run.events.is_empty(),
        "events reached a refused client: {run:#?}"
    );
    assert!(!run.complete, "{run:#?}");
    assert!(
        run.stderr.starts_with("ERROR ") && run.stderr.contains("4403"),
        "expected ERROR with close code 4403 on stderr: {run:#?}"
    );
}
