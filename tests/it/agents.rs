//! Agents through GraphQL: create, read, list, update, (de)activate, delete; every rule a clear
//! BAD_USER_INPUT naming the field; keys must be the owner's and active; isolation.

use crate::common;

use common::{Session, TestApp, code, field, id_at};
use serde_json::{Value, json};

const FIELDS: &str = "id name description role goal backstory provider model temperature maxOutputTokens tools config isActive apiKey { id maskedKey } createdAt updatedAt";

async fn key(app: &TestApp, user: &Session, name: &str) -> String {
    let body = app
        .gql_as(
            Some(&user.access),
            "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { id } }",
            json!({"i": {"name": name, "provider": "OPENAI", "secret": "sk-proj-abcdefghijklmnop1234"}}),
        )
        .await;
    id_at(&body, &["createApiKey"])
}

fn input(key_id: &str) -> Value {
    json!({"name": "Planner", "description": "plans trips", "role": "a travel planner", "goal": "plan a weekend", "backstory": "has been everywhere",
           "apiKeyId": key_id, "model": "gpt-4o-mini", "temperature": 0.7, "maxOutputTokens": 512, "tools": ["WEB_SEARCH", "CALCULATOR"], "config": {"style": "terse"}})
}

async fn create(app: &TestApp, user: &Session, input: Value) -> Value {
    app.gql_as(
        Some(&user.access),
        &format!("mutation($i: CreateAgentInput!) {{ createAgent(input: $i) {{ {FIELDS} }} }}"),
        json!({"i": input}),
    )
    .await
}

#[tokio::test]
async fn agents_are_created_read_and_listed() {
    let app = TestApp::spawn().await;
    let user = app.register("agents@example.com").await;
    let key_id = key(&app, &user, "k").await;
    let body = create(&app, &user, input(&key_id)).await;
    let agent = &body["data"]["createAgent"];
    assert_eq!(agent["name"], "Planner", "{body}");
    assert_eq!(agent["provider"], "OPENAI");
    assert_eq!(agent["temperature"], 0.7);
    assert_eq!(agent["maxOutputTokens"], 512);
    assert_eq!(agent["tools"], json!(["WEB_SEARCH", "CALCULATOR"]));
    assert_eq!(agent["config"], json!({"style": "terse"}));
    assert_eq!(agent["isActive"], true);
    assert_eq!(agent["apiKey"]["id"], key_id.as_str());
    assert_eq!(agent["apiKey"]["maskedKey"], "sk-…1234");
    let id = agent["id"].as_str().unwrap();
    let one = app
        .gql_as(
            Some(&user.access),
            "query($id: ID!) { agent(id: $id) { name } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(one["data"]["agent"]["name"], "Planner");

    for i in 0..3 {
        let mut more = input(&key_id);
        more["name"] = json!(format!("Agent {i}"));
        create(&app, &user, more).await;
    }
    let page = app
        .gql_as(Some(&user.access), "{ agents(first: 2) { edges { node { name } } pageInfo { hasNextPage endCursor } } me { agents(first: 10) { edges { node { name } } } } }", json!({}))
        .await;
    let names: Vec<&str> = page["data"]["agents"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Agent 2", "Agent 1"], "{page}");
    assert_eq!(page["data"]["agents"]["pageInfo"]["hasNextPage"], true);
    assert_eq!(
        page["data"]["me"]["agents"]["edges"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

#[tokio::test]
async fn every_rule_is_a_bad_user_input_naming_the_field() {
    let app = TestApp::spawn().await;
    let user = app.register("rules@example.com").await;
    let key_id = key(&app, &user, "k").await;
    let with = |field: &str, value: Value| {
        let mut i = input(&key_id);
        i[field] = value;
        i
    };
    let cases = [
        (with("name", json!("")), "input.name"),
        (with("name", json!("x".repeat(101))), "input.name"),
        (with("role", json!("  ")), "input.role"),
        (with("goal", json!("")), "input.goal"),
        (
            with("backstory", json!("x".repeat(8001))),
            "input.backstory",
        ),
        (
            with("description", json!("x".repeat(2001))),
            "input.description",
        ),
        (with("model", json!("")), "input.model"),
        (with("model", json!("gpt 4o")), "input.model"),
        (with("temperature", json!(2.5)), "input.temperature"),
        (with("temperature", json!(-0.1)), "input.temperature"),
        (with("maxOutputTokens", json!(0)), "input.maxOutputTokens"),
        (
            with("tools", json!(["WEB_SEARCH", "WEB_SEARCH"])),
            "input.tools",
        ),
        (with("config", json!([1, 2])), "input.config"),
        (
            with("config", json!({"big": "x".repeat(17 * 1024)})),
            "input.config",
        ),
        (with("apiKeyId", json!("nope")), "input.apiKeyId"),
        (
            with("apiKeyId", json!(uuid::Uuid::now_v7())),
            "input.apiKeyId",
        ),
    ];
    for (input, expected) in cases {
        let body = create(&app, &user, input.clone()).await;
        assert_eq!(
            (code(&body), field(&body)),
            ("BAD_USER_INPUT", expected),
            "{body}"
        );
    }
    let unknown_tool = create(&app, &user, with("tools", json!(["TELEPORT"]))).await;
    assert_eq!(code(&unknown_tool), "GRAPHQL_VALIDATION_FAILED");
    assert_eq!(app.count("SELECT count(*) FROM agents").await, 0);
}

#[tokio::test]
async fn names_are_unique_per_user_and_keys_must_be_yours_and_active() {
    let app = TestApp::spawn().await;
    let user = app.register("unique@example.com").await;
    let other = app.register("other@example.com").await;
    let key_id = key(&app, &user, "mine").await;
    let foreign_key = key(&app, &other, "theirs").await;
    create(&app, &user, input(&key_id)).await;
    let mut dup = input(&key_id);
    dup["name"] = json!("PLANNER");
    assert_eq!(code(&create(&app, &user, dup).await), "CONFLICT");
    // Another user's key is as good as unknown.
    let mut foreign = input(&foreign_key);
    foreign["name"] = json!("thief");
    let body = create(&app, &user, foreign).await;
    assert_eq!(
        (code(&body), field(&body)),
        ("BAD_USER_INPUT", "input.apiKeyId"),
        "{body}"
    );
    // An inactive key is refused.
    app.gql_as(
        Some(&user.access),
        "mutation($id: ID!) { setApiKeyActive(id: $id, active: false) { id } }",
        json!({"id": key_id}),
    )
    .await;
    let mut second = input(&key_id);
    second["name"] = json!("second");
    let body = create(&app, &user, second).await;
    assert_eq!(
        (code(&body), field(&body)),
        ("BAD_USER_INPUT", "input.apiKeyId"),
        "{body}"
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("inactive")
    );
    // The same name is fine for another user.
    let other_key = key(&app, &other, "k2").await;
    let body = create(&app, &other, input(&other_key)).await;
    assert_eq!(body["data"]["createAgent"]["name"], "Planner");
}

#[tokio::test]
async fn updates_change_only_what_is_sent_and_can_clear_nullable_fields() {
    let app = TestApp::spawn().await;
    let user = app.register("update@example.com").await;
    let key_id = key(&app, &user, "k").await;
    let other_key = key(&app, &user, "k2").await;
    let id = id_at(&create(&app, &user, input(&key_id)).await, &["createAgent"]);
    let update = |i: Value| {
        let (app, token, id) = (&app, user.access.clone(), id.clone());
        async move {
            app.gql_as(Some(&token), &format!("mutation($id: ID!, $i: UpdateAgentInput!) {{ updateAgent(id: $id, input: $i) {{ {FIELDS} }} }}"), json!({"id": id, "i": i}))
                .await
        }
    };
    let body =
        update(json!({"goal": "plan a week", "apiKeyId": other_key, "temperature": null})).await;
    let agent = &body["data"]["updateAgent"];
    assert_eq!(agent["goal"], "plan a week", "{body}");
    assert_eq!(agent["apiKey"]["id"], other_key.as_str());
    assert!(agent["temperature"].is_null());
    assert_eq!(agent["name"], "Planner");
    assert_eq!(agent["maxOutputTokens"], 512);
    let bad = update(json!({"temperature": 3})).await;
    assert_eq!(
        (code(&bad), field(&bad)),
        ("BAD_USER_INPUT", "input.temperature")
    );
    let active = app
        .gql_as(
            Some(&user.access),
            "mutation($id: ID!) { setAgentActive(id: $id, active: false) { isActive } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(active["data"]["setAgentActive"]["isActive"], false);
    let filtered = app
        .gql_as(
            Some(&user.access),
            "{ agents(active: true) { edges { node { id } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        filtered["data"]["agents"]["edges"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test]
async fn a_key_in_use_cannot_be_deleted_and_the_error_names_the_agents() {
    let app = TestApp::spawn().await;
    let user = app.register("inuse@example.com").await;
    let key_id = key(&app, &user, "k").await;
    let id = id_at(&create(&app, &user, input(&key_id)).await, &["createAgent"]);
    let body = app
        .gql_as(
            Some(&user.access),
            "mutation($id: ID!) { deleteApiKey(id: $id) }",
            json!({"id": key_id}),
        )
        .await;
    assert_eq!(code(&body), "CONFLICT", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("Planner")
    );
    // Deleting the agent (and its runs) frees the key.
    app.sql(&format!("INSERT INTO executions (id, user_id, agent_id, api_key_id, provider, model, status, input) VALUES (gen_random_uuid(), '{}', '{id}', '{key_id}', 'OPENAI', 'm', 'SUCCEEDED', 'x')", user.user_id)).await;
    app.sql("INSERT INTO execution_events (execution_id, sequence, kind) SELECT id, 1, 'STARTED' FROM executions").await;
    let deleted = app
        .gql_as(
            Some(&user.access),
            "mutation($id: ID!) { deleteAgent(id: $id) }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(deleted["data"]["deleteAgent"], true, "{deleted}");
    assert_eq!(
        app.count("SELECT count(*) FROM executions").await,
        0,
        "no orphan runs"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM execution_events").await,
        0,
        "no orphan events"
    );
    let body = app
        .gql_as(
            Some(&user.access),
            "mutation($id: ID!) { deleteApiKey(id: $id) }",
            json!({"id": key_id}),
        )
        .await;
    assert_eq!(body["data"]["deleteApiKey"], true, "{body}");
}

#[tokio::test]
async fn an_agent_with_a_run_in_progress_cannot_be_deleted() {
    let app = TestApp::spawn().await;
    let user = app.register("busy@example.com").await;
    let key_id = key(&app, &user, "k").await;
    let id = id_at(&create(&app, &user, input(&key_id)).await, &["createAgent"]);
    app.sql(&format!("INSERT INTO executions (id, user_id, agent_id, api_key_id, provider, model, status, input) VALUES (gen_random_uuid(), '{}', '{id}', '{key_id}', 'OPENAI', 'm', 'RUNNING', 'x')", user.user_id)).await;
    let body = app
        .gql_as(
            Some(&user.access),
            "mutation($id: ID!) { deleteAgent(id: $id) }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(code(&body), "CONFLICT", "{body}");
    assert_eq!(app.count("SELECT count(*) FROM agents").await, 1);
}

#[tokio::test]
async fn another_users_agent_is_not_found_for_every_operation() {
    let app = TestApp::spawn().await;
    let owner = app.register("owner@example.com").await;
    let thief = app.register("thief@example.com").await;
    let key_id = key(&app, &owner, "k").await;
    let id = id_at(
        &create(&app, &owner, input(&key_id)).await,
        &["createAgent"],
    );
    let get = app
        .gql_as(
            Some(&thief.access),
            "query($id: ID!) { agent(id: $id) { id } }",
            json!({"id": id}),
        )
        .await;
    assert!(get["data"]["agent"].is_null());
    for mutation in [
        "mutation($id: ID!) { updateAgent(id: $id, input: {name: \"mine now\"}) { id } }",
        "mutation($id: ID!) { setAgentActive(id: $id, active: false) { id } }",
        "mutation($id: ID!) { deleteAgent(id: $id) }",
    ] {
        let body = app
            .gql_as(Some(&thief.access), mutation, json!({"id": id}))
            .await;
        assert_eq!(code(&body), "NOT_FOUND", "{mutation}: {body}");
    }
    let list = app
        .gql_as(
            Some(&thief.access),
            "{ agents { edges { node { id } } } }",
            json!({}),
        )
        .await;
    assert_eq!(list["data"]["agents"]["edges"].as_array().unwrap().len(), 0);
    let row = app
        .db()
        .await
        .query_one("SELECT name, is_active FROM agents", &[])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, bool>(1)),
        ("Planner".to_owned(), true)
    );
}
