//! Conversation threads end to end: the provider's request carries the thread's earlier turns
//! (tool calls and results included), history trimmed to the context window oldest first, no
//! two runs at once in a thread, titles, listing by activity, deletion, and isolation.

use serde_json::{Value, json};

use crate::{
    common::{code, fake_provider::ToolTurn, field, id_at},
    executions::{World, slow},
    tools::openai_world,
};

const RUN: &str = "mutation($a: ID!, $i: String!, $t: ID) { executeAgent(agentId: $a, input: $i, threadId: $t) { id threadId } }";

async fn create_thread(w: &World, title: Option<&str>) -> String {
    let body = w
        .ask(
            "mutation($a: ID!, $t: String) { createThread(agentId: $a, title: $t) { id title } }",
            json!({"a": w.agent_id, "t": title}),
        )
        .await;
    id_at(&body, &["createThread"])
}

async fn send(w: &World, thread: &str, input: &str) -> Value {
    w.ask(RUN, json!({"a": w.agent_id, "i": input, "t": thread}))
        .await
}

/// Sends `input` in the thread and waits for the run's end.
async fn turn(w: &World, thread: &str, input: &str) -> String {
    let body = send(w, thread, input).await;
    let id = id_at(&body, &["executeAgent"]);
    assert_eq!(body["data"]["executeAgent"]["threadId"], thread);
    assert_eq!(w.finished(&id).await["status"], "SUCCEEDED");
    id
}

/// (role, content) of each message of the provider's `n`-th chat request.
fn sent(w: &World, n: usize) -> Vec<(String, Value)> {
    let requests: Vec<Value> = w
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.body)
        .collect();
    requests[n]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap().to_owned(), m["content"].clone()))
        .collect()
}

#[tokio::test]
async fn each_run_of_a_thread_sees_the_earlier_turns_with_their_tool_calls() {
    let (_backends, w) = openai_world(&["CALCULATOR"], json!({})).await;
    let thread = create_thread(&w, None).await;
    w.fake.queue_tool_turn(ToolTurn::calls(&[(
        "calculator",
        r#"{"expression": "6 * 7"}"#,
    )]));
    turn(&w, &thread, "What is six times seven?\nThanks").await; // requests 0 and 1
    turn(&w, &thread, "And doubled?").await; // request 2
    turn(&w, &thread, "Say it in words").await; // request 3

    let third = sent(&w, 3);
    let roles: Vec<&str> = third.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(
        roles,
        [
            "system",
            "user",
            "assistant",
            "tool",
            "assistant",
            "user",
            "assistant",
            "user"
        ],
        "{third:?}"
    );
    assert_eq!(third[1].1, "What is six times seven?\nThanks");
    assert_eq!(third[3].1, "42", "the tool result of the first turn");
    assert_eq!(third[4].1, "Hello, world!");
    assert_eq!(third[5].1, "And doubled?");
    assert_eq!(third[7].1, "Say it in words");
    let requests: Vec<Value> = w
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.body)
        .collect();
    assert_eq!(
        requests[3]["messages"][2]["tool_calls"][0]["function"]["name"],
        "calculator"
    );

    // Titled from the first message's first line; listed with its runs, newest first.
    let body = w.ask("{ threads(first: 5) { edges { node { id title agent { name } executions(first: 5) { edges { node { input threadId } } } } } } }",
            json!({}),
        )
        .await;
    let node = &body["data"]["threads"]["edges"][0]["node"];
    assert_eq!(node["title"], "What is six times seven?");
    assert_eq!(node["agent"]["name"], "Researcher");
    let inputs: Vec<&str> = node["executions"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["input"].as_str().unwrap())
        .collect();
    assert_eq!(
        inputs,
        [
            "Say it in words",
            "And doubled?",
            "What is six times seven?\nThanks"
        ]
    );
}

#[tokio::test]
async fn the_oldest_turns_are_left_out_when_the_history_passes_the_context_window() {
    let (_backends, w) = openai_world(&[], json!({"contextTokens": 3000})).await;
    let thread = create_thread(&w, Some("Long talk")).await;
    let long = "word ".repeat(2500); // ~2,500 tokens: more than the window leaves for history
    turn(&w, &thread, &long).await;
    turn(&w, &thread, "second").await;
    turn(&w, &thread, "third").await;
    let third = sent(&w, 2);
    let users: Vec<&Value> = third
        .iter()
        .filter(|(r, _)| r == "user")
        .map(|(_, c)| c)
        .collect();
    assert_eq!(
        users,
        [&json!("second"), &json!("third")],
        "the long first turn went, the rest stayed"
    );
    assert_eq!(third[0].0, "system", "the system prompt always stays");
    // The first turn alone passes what the window leaves: the second request had no history.
    let second = sent(&w, 1);
    assert_eq!(second.len(), 2, "{second:?}");
}

#[tokio::test]
async fn two_runs_cannot_interleave_in_one_thread_and_a_thread_is_its_owners_only() {
    let (_backends, w) = openai_world(&[], json!({})).await;
    let thread = create_thread(&w, None).await;
    w.fake.set_stream(slow(&["a", "b", "c", "d"], 150));
    let first = id_at(&send(&w, &thread, "slowly").await, &["executeAgent"]);
    let busy = send(&w, &thread, "meanwhile").await;
    assert_eq!(code(&busy), "CONFLICT", "{busy}");
    let deleting = w
        .ask(
            "mutation($id: ID!) { deleteThread(id: $id) }",
            json!({"id": thread}),
        )
        .await;
    assert_eq!(code(&deleting), "CONFLICT");
    assert_eq!(w.finished(&first).await["status"], "SUCCEEDED");
    w.fake.set_stream(Default::default());
    turn(&w, &thread, "now").await;

    // Another user sees nothing and can use nothing of it.
    let eve = w.app.register("eve@example.com").await;
    let seen = w
        .app
        .gql_as(
            Some(&eve.access),
            "query($id: ID!) { thread(id: $id) { id } threads { edges { node { id } } } }",
            json!({"id": thread}),
        )
        .await;
    assert_eq!(seen["data"]["thread"], Value::Null);
    assert_eq!(seen["data"]["threads"]["edges"], json!([]));
    let renamed = w
        .app
        .gql_as(
            Some(&eve.access),
            "mutation($id: ID!) { renameThread(id: $id, title: \"mine\") { id } }",
            json!({"id": thread}),
        )
        .await;
    assert_eq!(code(&renamed), "NOT_FOUND");
    let joined = w
        .app
        .gql_as(
            Some(&eve.access),
            RUN,
            json!({"a": w.agent_id, "i": "hi", "t": thread}),
        )
        .await;
    assert_eq!(code(&joined), "NOT_FOUND", "{joined}");

    // A thread is with one agent.
    let other = w.ask("mutation($i: CreateAgentInput!) { createAgent(input: $i) { id } }",
            json!({"i": {"name": "Other", "role": "r", "goal": "g", "apiKeyId": w.key_id, "model": "gpt-4o-mini"}}),
        )
        .await;
    let wrong = w
        .ask(
            RUN,
            json!({"a": id_at(&other, &["createAgent"]), "i": "hi", "t": thread}),
        )
        .await;
    assert_eq!(
        (code(&wrong), field(&wrong)),
        ("BAD_USER_INPUT", "threadId")
    );

    // Renamed, then deleted: its runs stay in the history, unlinked.
    let renamed = w
        .ask(
            "mutation($id: ID!) { renameThread(id: $id, title: \"  Plans  \") { title } }",
            json!({"id": thread}),
        )
        .await;
    assert_eq!(renamed["data"]["renameThread"]["title"], "Plans");
    let empty = w
        .ask(
            "mutation($id: ID!) { renameThread(id: $id, title: \" \") { title } }",
            json!({"id": thread}),
        )
        .await;
    assert_eq!((code(&empty), field(&empty)), ("BAD_USER_INPUT", "title"));
    let deleted = w
        .ask(
            "mutation($id: ID!) { deleteThread(id: $id) }",
            json!({"id": thread}),
        )
        .await;
    assert_eq!(deleted["data"]["deleteThread"], true);
    assert_eq!(w.execution(&first).await["status"], "SUCCEEDED");
    let linked = w
        .ask(
            "query($id: ID!) { execution(id: $id) { threadId } }",
            json!({"id": first}),
        )
        .await;
    assert_eq!(linked["data"]["execution"]["threadId"], Value::Null);
}

#[tokio::test]
async fn threads_are_listed_by_latest_activity_with_stable_cursors() {
    let (_backends, w) = openai_world(&[], json!({})).await;
    let a = create_thread(&w, Some("A")).await;
    create_thread(&w, Some("B")).await;
    create_thread(&w, Some("C")).await;
    turn(&w, &a, "bump A").await; // A is now the most recently active
    let list = |after: Option<String>| {
        w.ask("query($after: String) { threads(first: 2, after: $after) { edges { cursor node { title } } pageInfo { hasNextPage } } }",
            json!({"after": after}),
        )
    };
    let first = list(None).await;
    let titles: Vec<&str> = first["data"]["threads"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["A", "C"]);
    assert_eq!(first["data"]["threads"]["pageInfo"]["hasNextPage"], true);
    let cursor = first["data"]["threads"]["edges"][1]["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let second = list(Some(cursor)).await;
    assert_eq!(second["data"]["threads"]["edges"][0]["node"]["title"], "B");
    assert_eq!(second["data"]["threads"]["pageInfo"]["hasNextPage"], false);
    let bad = list(Some("nope".into())).await;
    assert_eq!((code(&bad), field(&bad)), ("BAD_USER_INPUT", "after"));
}

#[tokio::test]
async fn a_list_of_threads_with_their_runs_takes_as_many_statements_for_one_as_for_ten() {
    let w = crate::executions::world_with("OPENAI", "gpt-4o-mini", |c| {
        c.execution_heartbeat_secs = 3600;
        c.dataloader_delay_ms = 20;
    })
    .await;
    for i in 0..10 {
        create_thread(&w, Some(&format!("thread {i}"))).await;
    }
    w.app
        .sql(&format!(
            "INSERT INTO executions (id, user_id, agent_id, api_key_id, provider, model, status, input, thread_id) \
             SELECT gen_random_uuid(), t.user_id, t.agent_id, a.api_key_id, 'OPENAI', a.model, 'SUCCEEDED', 'seed', t.id \
             FROM threads t JOIN agents a ON a.id = t.agent_id, generate_series(1, 2) WHERE t.user_id = '{}'",
            w.user.user_id
        ))
        .await;
    let count = |n: i32| {
        let w = &w;
        async move {
            let query = format!(
                "{{ threads(first: {n}) {{ edges {{ node {{ title agent {{ name }} executions(first: 5) {{ edges {{ node {{ id input }} }} }} }} }} }} }}"
            );
            let before = w.app.state.query_counter.get();
            let body = w.ask(&query, json!({})).await;
            let after = w.app.state.query_counter.get();
            let edges = body["data"]["threads"]["edges"]
                .as_array()
                .unwrap_or_else(|| panic!("{body}"));
            assert_eq!(edges.len(), n as usize);
            assert_eq!(
                edges[0]["node"]["executions"]["edges"]
                    .as_array()
                    .unwrap()
                    .len(),
                2
            );
            after - before
        }
    };
    let one = count(1).await;
    let ten = count(10).await;
    assert_eq!(one, ten, "statements for 1 thread: {one}, for 10: {ten}");
}
