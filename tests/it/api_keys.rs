//! The key vault through GraphQL: create/list/update/rotate/deactivate/delete, masked output,
//! encryption at rest, live key tests against a fake provider, isolation, and bad input.

mod egress;
mod probe;

use crate::common;

use std::time::Duration;

use common::{
    TestApp, code,
    fake_provider::{FakeProvider, Mode},
    field, id_at,
};
use serde_json::{Value, json};

const OPENAI_KEY: &str = "sk-proj-abcdefghijklmnop1234";
const ANTHROPIC_KEY: &str = "sk-ant-api03-abcdefghijklmnop9876";
const HF_TOKEN: &str = "hf_abcdefghijklmnopWXYZ";

const FIELDS: &str = "id name provider endpoint maskedKey isActive lastUsedAt lastTestedAt lastTestOk lastTestMessage createdAt updatedAt";

async fn create(app: &TestApp, token: &str, input: Value) -> Value {
    app.gql_as(
        Some(token),
        &format!(
            "mutation($input: CreateApiKeyInput!) {{ createApiKey(input: $input) {{ {FIELDS} }} }}"
        ),
        json!({ "input": input }),
    )
    .await
}

/// A test server whose providers all point at one fake.
async fn app_with_fake() -> (TestApp, FakeProvider) {
    let fake = FakeProvider::start().await;
    let app = TestApp::spawn_with(|c| {
        fake.serve_all_providers(c);
        c.provider_timeout_secs = 1;
    })
    .await;
    (app, fake)
}

#[tokio::test]
async fn keys_are_created_listed_and_only_ever_shown_masked() {
    let app = TestApp::spawn().await;
    let user = app.register("keys@example.com").await;
    let body = create(
        &app,
        &user.access,
        json!({"name": " Work ", "provider": "OPENAI", "secret": OPENAI_KEY}),
    )
    .await;
    let key = &body["data"]["createApiKey"];
    assert_eq!(key["name"], "Work", "{body}");
    assert_eq!(key["provider"], "OPENAI");
    assert_eq!(key["maskedKey"], "sk-…1234");
    assert_eq!(key["isActive"], true);
    assert!(key["endpoint"].is_null());
    create(
        &app,
        &user.access,
        json!({"name": "Claude", "provider": "ANTHROPIC", "secret": ANTHROPIC_KEY}),
    )
    .await;
    create(
        &app,
        &user.access,
        json!({"name": "HF", "provider": "HUGGINGFACE", "secret": HF_TOKEN}),
    )
    .await;
    create(
        &app,
        &user.access,
        json!({"name": "Ollama", "provider": "CUSTOM", "secret": "ollama-local-secret", "endpoint": "http://localhost:11434/v1/"}),
    )
    .await;

    let list = app
        .gql_as(
            Some(&user.access),
            &format!("{{ apiKeys {{ {FIELDS} }} me {{ apiKeys {{ name }} }} }}"),
            json!({}),
        )
        .await;
    let names: Vec<&str> = list["data"]["apiKeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Ollama", "HF", "Claude", "Work"], "{list}");
    assert_eq!(list["data"]["me"]["apiKeys"].as_array().unwrap().len(), 4);
    let masks: Vec<&str> = list["data"]["apiKeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["maskedKey"].as_str().unwrap())
        .collect();
    assert_eq!(masks, ["…cret", "hf_…WXYZ", "sk-ant-…9876", "sk-…1234"]);
    assert_eq!(
        list["data"]["apiKeys"][0]["endpoint"],
        "http://localhost:11434/v1"
    );
    let text = list.to_string();
    for secret in [OPENAI_KEY, ANTHROPIC_KEY, HF_TOKEN, "ollama-local-secret"] {
        assert!(!text.contains(secret), "a secret reached a response");
    }
}

#[tokio::test]
async fn the_table_holds_no_plaintext_and_ciphertexts_are_bound_to_their_row() {
    let app = TestApp::spawn().await;
    let user = app.register("cipher@example.com").await;
    create(
        &app,
        &user.access,
        json!({"name": "a", "provider": "OPENAI", "secret": OPENAI_KEY}),
    )
    .await;
    create(
        &app,
        &user.access,
        json!({"name": "b", "provider": "OPENAI", "secret": "sk-second-key-000000000000"}),
    )
    .await;
    let rows = app
        .db()
        .await
        .query(
            "SELECT id::text, secret_ciphertext FROM api_keys ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    for row in &rows {
        let stored: Vec<u8> = row.get(1);
        assert_eq!(stored[0], 1, "version byte");
        assert!(
            !stored
                .windows(OPENAI_KEY.len())
                .any(|w| w == OPENAI_KEY.as_bytes())
        );
        assert!(!String::from_utf8_lossy(&stored).contains("sk-"));
    }
    let dump = app
        .db()
        .await
        .query("SELECT row_to_json(api_keys)::text FROM api_keys", &[])
        .await
        .unwrap();
    for row in dump {
        let text: String = row.get(0);
        assert!(
            !text.contains(OPENAI_KEY) && !text.contains("sk-second-key"),
            "{text}"
        );
    }
    // Copy the first row's ciphertext into the second: it must not decrypt there.
    app.sql("UPDATE api_keys SET secret_ciphertext = (SELECT secret_ciphertext FROM api_keys ORDER BY id LIMIT 1) WHERE id = (SELECT id FROM api_keys ORDER BY id DESC LIMIT 1)").await;
    let second_text: String = rows[1].get(0);
    let second = uuid::Uuid::parse_str(&second_text).unwrap();
    let vault = &app.state.vault;
    let stored: Vec<u8> = app
        .db()
        .await
        .query_one(
            "SELECT secret_ciphertext FROM api_keys WHERE id = $1::text::uuid",
            &[&second_text],
        )
        .await
        .unwrap()
        .get(0);
    let user_id = uuid::Uuid::parse_str(&user.user_id).unwrap();
    let slot = agentry::crypto::vault::SecretSlot {
        table: "api_keys",
        column: "secret_ciphertext",
        row_id: second,
        user_id,
    };
    assert!(vault.decrypt(slot, &stored).is_err());
}

#[tokio::test]
async fn names_are_unique_per_user_whatever_their_case() {
    let app = TestApp::spawn().await;
    let alice = app.register("alice@example.com").await;
    let bob = app.register("bob@example.com").await;
    create(
        &app,
        &alice.access,
        json!({"name": "Main", "provider": "OPENAI", "secret": OPENAI_KEY}),
    )
    .await;
    let dup = create(
        &app,
        &alice.access,
        json!({"name": "main", "provider": "ANTHROPIC", "secret": ANTHROPIC_KEY}),
    )
    .await;
    assert_eq!(code(&dup), "CONFLICT", "{dup}");
    let other = create(
        &app,
        &bob.access,
        json!({"name": "Main", "provider": "OPENAI", "secret": OPENAI_KEY}),
    )
    .await;
    assert_eq!(other["data"]["createApiKey"]["name"], "Main", "{other}");
    assert_eq!(app.count("SELECT count(*) FROM api_keys").await, 2);
}

#[tokio::test]
async fn bad_input_names_the_field_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let user = app.register("bad@example.com").await;
    let cases = [
        (
            json!({"name": "", "provider": "OPENAI", "secret": OPENAI_KEY}),
            "input.name",
        ),
        (
            json!({"name": "x".repeat(101), "provider": "OPENAI", "secret": OPENAI_KEY}),
            "input.name",
        ),
        (
            json!({"name": "k", "provider": "OPENAI", "secret": ""}),
            "input.secret",
        ),
        (
            json!({"name": "k", "provider": "OPENAI", "secret": "pk-live-abcdefghijklmnopqrs"}),
            "input.secret",
        ),
        (
            json!({"name": "k", "provider": "OPENAI", "secret": ANTHROPIC_KEY}),
            "input.secret",
        ),
        (
            json!({"name": "k", "provider": "ANTHROPIC", "secret": OPENAI_KEY}),
            "input.secret",
        ),
        (
            json!({"name": "k", "provider": "HUGGINGFACE", "secret": "api_abcdefghijk"}),
            "input.secret",
        ),
        (
            json!({"name": "k", "provider": "OPENAI", "secret": "sk-has space in it 1234567"}),
            "input.secret",
        ),
        (
            json!({"name": "k", "provider": "OPENAI", "secret": format!("sk-{}", "a".repeat(600))}),
            "input.secret",
        ),
        (
            json!({"name": "k", "provider": "CUSTOM", "secret": "s"}),
            "input.endpoint",
        ),
        (
            json!({"name": "k", "provider": "CUSTOM", "secret": "s", "endpoint": "not a url"}),
            "input.endpoint",
        ),
        (
            json!({"name": "k", "provider": "CUSTOM", "secret": "s", "endpoint": "ftp://x/v1"}),
            "input.endpoint",
        ),
        (
            json!({"name": "k", "provider": "OPENAI", "secret": OPENAI_KEY, "endpoint": "https://x/v1"}),
            "input.endpoint",
        ),
    ];
    for (input, expected) in cases {
        let body = create(&app, &user.access, input.clone()).await;
        assert_eq!(
            (code(&body), field(&body)),
            ("BAD_USER_INPUT", expected),
            "{input}: {body}"
        );
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(
            !message.contains(OPENAI_KEY) && !message.contains(ANTHROPIC_KEY),
            "{message}"
        );
    }
    let unknown = create(
        &app,
        &user.access,
        json!({"name": "k", "provider": "MISTRAL", "secret": "x"}),
    )
    .await;
    assert_eq!(code(&unknown), "GRAPHQL_VALIDATION_FAILED", "{unknown}");
    assert_eq!(app.count("SELECT count(*) FROM api_keys").await, 0);
}

#[tokio::test]
async fn production_allows_plain_http_endpoints_only_on_loopback() {
    let app = TestApp::spawn_with(|c| {
        c.environment = agentry::config::Environment::Production;
        c.bcrypt_cost = 10;
    })
    .await;
    // Registration hashes at cost 10 here: one user is enough.
    let user = app.register("prod@example.com").await;
    let remote = create(&app, &user.access, json!({"name": "r", "provider": "CUSTOM", "secret": "s", "endpoint": "http://llm.example.com/v1"})).await;
    assert_eq!(
        (code(&remote), field(&remote)),
        ("BAD_USER_INPUT", "input.endpoint"),
        "{remote}"
    );
    let local = create(&app, &user.access, json!({"name": "l", "provider": "CUSTOM", "secret": "s", "endpoint": "http://127.0.0.1:8000/v1"})).await;
    assert_eq!(
        local["data"]["createApiKey"]["endpoint"], "http://127.0.0.1:8000/v1",
        "{local}"
    );
    let tls = create(&app, &user.access, json!({"name": "t", "provider": "CUSTOM", "secret": "s", "endpoint": "https://llm.example.com/v1"})).await;
    assert!(tls["data"]["createApiKey"].is_object(), "{tls}");
}

#[tokio::test]
async fn update_renames_moves_and_replaces_the_secret() {
    let (app, fake) = app_with_fake().await;
    let user = app.register("update@example.com").await;
    let created = create(
        &app,
        &user.access,
        json!({"name": "old", "provider": "OPENAI", "secret": OPENAI_KEY}),
    )
    .await;
    let id = id_at(&created, &["createApiKey"]);
    let update = |input: Value| {
        let (app, token, id) = (&app, user.access.clone(), id.clone());
        async move {
            app.gql_as(
                Some(&token),
                "mutation($id: ID!, $input: UpdateApiKeyInput!) { updateApiKey(id: $id, input: $input) { name maskedKey endpoint } }",
                json!({"id": id, "input": input}),
            )
            .await
        }
    };
    let body = update(json!({"name": "renamed"})).await;
    assert_eq!(body["data"]["updateApiKey"]["name"], "renamed", "{body}");
    assert_eq!(body["data"]["updateApiKey"]["maskedKey"], "sk-…1234");
    let rotated = "sk-proj-rotated-secret-5678";
    let body = update(json!({"secret": rotated})).await;
    assert_eq!(
        body["data"]["updateApiKey"]["maskedKey"], "sk-…5678",
        "{body}"
    );
    assert_eq!(body["data"]["updateApiKey"]["name"], "renamed");
    // The provider now sees the new secret.
    fake.accept_key(rotated);
    let test = app
        .gql_as(
            Some(&user.access),
            "mutation($id: ID!) { testApiKey(id: $id) { ok } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(test["data"]["testApiKey"]["ok"], true, "{test}");
    let sent = fake
        .requests()
        .last()
        .unwrap()
        .header("authorization")
        .unwrap()
        .to_owned();
    assert_eq!(sent, format!("Bearer {rotated}"));

    let bad = update(json!({"endpoint": "https://x.example/v1"})).await;
    assert_eq!(
        (code(&bad), field(&bad)),
        ("BAD_USER_INPUT", "input.endpoint"),
        "{bad}"
    );
    let bad = update(json!({"secret": "nope"})).await;
    assert_eq!(
        (code(&bad), field(&bad)),
        ("BAD_USER_INPUT", "input.secret"),
        "{bad}"
    );
    let bad = update(json!({"name": "  "})).await;
    assert_eq!(
        (code(&bad), field(&bad)),
        ("BAD_USER_INPUT", "input.name"),
        "{bad}"
    );
    let body = app
        .gql_as(
            Some(&user.access),
            "{ apiKeys { name maskedKey } }",
            json!({}),
        )
        .await;
    assert_eq!(body["data"]["apiKeys"][0]["name"], "renamed");
    assert_eq!(body["data"]["apiKeys"][0]["maskedKey"], "sk-…5678");
}

#[tokio::test]
async fn keys_can_be_deactivated_reactivated_and_deleted() {
    let app = TestApp::spawn().await;
    let user = app.register("life@example.com").await;
    let created = create(
        &app,
        &user.access,
        json!({"name": "k", "provider": "OPENAI", "secret": OPENAI_KEY}),
    )
    .await;
    let id = id_at(&created, &["createApiKey"]);
    let set = |active: bool| {
        app.gql_as(Some(&user.access), "mutation($id: ID!, $a: Boolean!) { setApiKeyActive(id: $id, active: $a) { isActive } }", json!({"id": id, "a": active}))
    };
    assert_eq!(
        set(false).await["data"]["setApiKeyActive"]["isActive"],
        false
    );
    assert_eq!(set(true).await["data"]["setApiKeyActive"]["isActive"], true);
    let deleted = app
        .gql_as(
            Some(&user.access),
            "mutation($id: ID!) { deleteApiKey(id: $id) }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(deleted["data"]["deleteApiKey"], true);
    assert_eq!(app.count("SELECT count(*) FROM api_keys").await, 0);
    let again = app
        .gql_as(
            Some(&user.access),
            "mutation($id: ID!) { deleteApiKey(id: $id) }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(code(&again), "NOT_FOUND");
}

#[tokio::test]
async fn another_users_key_is_not_found_for_every_operation() {
    let (app, fake) = app_with_fake().await;
    fake.accept_key(OPENAI_KEY);
    let owner = app.register("owner@example.com").await;
    let thief = app.register("thief@example.com").await;
    let admin = app.user_with_role("admin@example.com", "ADMIN").await;
    let created = create(
        &app,
        &owner.access,
        json!({"name": "mine", "provider": "OPENAI", "secret": OPENAI_KEY}),
    )
    .await;
    let id = id_at(&created, &["createApiKey"]);
    for token in [&thief.access, &admin.access] {
        let get = app
            .gql_as(
                Some(token),
                "query($id: ID!) { apiKey(id: $id) { name } }",
                json!({"id": id}),
            )
            .await;
        assert!(get["data"]["apiKey"].is_null(), "{get}");
        for mutation in [
            "mutation($id: ID!) { updateApiKey(id: $id, input: {name: \"stolen\"}) { name } }",
            "mutation($id: ID!) { setApiKeyActive(id: $id, active: false) { isActive } }",
            "mutation($id: ID!) { testApiKey(id: $id) { ok } }",
            "mutation($id: ID!) { deleteApiKey(id: $id) }",
        ] {
            let body = app.gql_as(Some(token), mutation, json!({"id": id})).await;
            assert_eq!(code(&body), "NOT_FOUND", "{mutation}: {body}");
        }
        let list = app
            .gql_as(Some(token), "{ apiKeys { id } }", json!({}))
            .await;
        assert_eq!(list["data"]["apiKeys"].as_array().unwrap().len(), 0);
    }
    // An admin looking at the owner cannot list their keys either.
    let via_user = app
        .gql_as(
            Some(&admin.access),
            "query($id: ID!) { user(id: $id) { email apiKeys { id } } }",
            json!({"id": owner.user_id}),
        )
        .await;
    assert_eq!(code(&via_user), "FORBIDDEN", "{via_user}");
    assert!(
        fake.requests().is_empty(),
        "no provider call was made for a stranger"
    );
    let row = app
        .db()
        .await
        .query_one("SELECT name, is_active FROM api_keys", &[])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, bool>(1)),
        ("mine".to_owned(), true)
    );
    let anonymous = app.gql("{ apiKeys { id } }", json!({})).await;
    assert_eq!(code(&anonymous), "UNAUTHENTICATED");
}

async fn test_key(app: &TestApp, token: &str, id: &str) -> Value {
    app.gql_as(
        Some(token),
        "mutation($id: ID!) { testApiKey(id: $id) { ok latencyMs message models apiKey { lastTestedAt lastTestOk lastTestMessage } } }",
        json!({"id": id}),
    )
    .await
}

#[tokio::test]
async fn rotating_the_encryption_key_leaves_every_key_usable_with_only_the_new_one() {
    let (app, fake) = app_with_fake().await;
    let user = app.register("rotate@example.com").await;
    fake.accept_key(OPENAI_KEY);
    fake.accept_key(ANTHROPIC_KEY);
    let mut ids = Vec::new();
    for (name, provider, secret) in [
        ("o", "OPENAI", OPENAI_KEY),
        ("a", "ANTHROPIC", ANTHROPIC_KEY),
    ] {
        let created = create(
            &app,
            &user.access,
            json!({"name": name, "provider": provider, "secret": secret}),
        )
        .await;
        ids.push(id_at(&created, &["createApiKey"]));
    }
    // A webhook's signing secret is in the vault too.
    let hook = app
        .gql_as(
            Some(&user.access),
            "mutation { createWebhook(input: {url: \"https://example.com/hooks\", events: [EXECUTION_FAILED]}) { webhook { id } } }",
            json!({}),
        )
        .await;
    let hook = id_at(&hook, &["createWebhook", "webhook"]);
    let new_key = "next:bmV4dC1rZXktbmV4dC1rZXktbmV4dC1rZXktMDAwMiE=";
    let rotate = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_agentry"))
            .arg("rotate-encryption-key")
            .env("DATABASE_URL", &app.database_url)
            .env(
                "AGENTRY_JWT_SECRET",
                "test-secret-test-secret-test-secret-0123",
            )
            .env(
                "AGENTRY_ENCRYPTION_KEYS",
                format!("{new_key},{}", common::TEST_ENCRYPTION_KEYS),
            )
            .output()
            .unwrap()
    };
    let output = rotate();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("rewrapped 3 secrets")
            && String::from_utf8_lossy(&output.stdout).contains("1 webhooks"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    // The webhook's secret is now under the new key (the key id follows the version byte and
    // its length).
    assert_eq!(
        app.count(&format!(
            "SELECT position('next'::bytea in secret_ciphertext)::bigint FROM webhooks WHERE id = '{hook}'"
        ))
        .await,
        3
    );
    // Re-running finds nothing left to do.
    assert!(String::from_utf8_lossy(&rotate().stdout).contains("rewrapped 0 secrets"));

    // A server with only the new key can still use both keys.
    let config = {
        let mut c = (*app.state.config).clone();
        c.encryption_keys = Some(new_key.to_owned().into());
        fake.serve_all_providers(&mut c);
        c
    };
    let state = agentry::state::AppState::new(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(agentry::http::serve(
        state,
        listener,
        std::future::pending(),
    ));
    for id in ids {
        let body: Value = app
            .http
            .post(format!("http://{addr}/graphql"))
            .bearer_auth(&user.access)
            .json(&json!({"query": "mutation($id: ID!) { testApiKey(id: $id) { ok message } }", "variables": {"id": id}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["data"]["testApiKey"]["ok"], true, "{body}");
    }
}

#[tokio::test]
async fn an_unknown_vault_key_is_a_clear_error_not_a_crash() {
    let (app, _fake) = app_with_fake().await;
    let user = app.register("lost@example.com").await;
    let created = create(
        &app,
        &user.access,
        json!({"name": "o", "provider": "OPENAI", "secret": OPENAI_KEY}),
    )
    .await;
    let id = id_at(&created, &["createApiKey"]);
    // The stored ciphertext names a key id the server does not hold.
    app.sql("UPDATE api_keys SET secret_ciphertext = overlay(secret_ciphertext placing 'x'::bytea from 3 for 1)").await;
    let body = test_key(&app, &user.access, &id).await;
    assert_eq!(code(&body), "INTERNAL_SERVER_ERROR", "{body}");
    assert_eq!(body["errors"][0]["message"], "internal server error");
    // The server keeps serving.
    let list = app
        .gql_as(Some(&user.access), "{ apiKeys { name } }", json!({}))
        .await;
    assert_eq!(list["data"]["apiKeys"][0]["name"], "o");
}
