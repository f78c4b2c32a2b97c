//! Webhooks end to end: endpoints registered over GraphQL receive signed deliveries from a local
//! receiver's point of view; the signatures are checked by the Standard Webhooks reference
//! library (npm `standardwebhooks`); failed deliveries are retried with backoff from the queue
//! in PostgreSQL, also after the server restarts, and given up after their attempts; runs
//! ending, budgets' alerts and keys rejected by their provider each produce their event; rules
//! name the field; another user's webhooks are out of reach.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode};
use serde_json::{Value, json};

use crate::{
    common::{
        code,
        fake_provider::{Mode, StreamScript},
        field, id_at,
        node::run_script,
    },
    executions::{World, world_with},
};

/// A delivery as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: String,
    at: Instant,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

#[derive(Default)]
struct Inbox {
    received: Vec<Received>,
    /// Statuses to answer with, in order; 200 once they run out.
    answers: VecDeque<u16>,
}

/// A local endpoint that records what it receives and answers as scripted.
#[derive(Clone)]
struct Receiver {
    url: String,
    inbox: Arc<Mutex<Inbox>>,
}

impl Receiver {
    async fn start() -> Self {
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let app =
            Router::new()
                .route(
                    "/hooks",
                    axum::routing::post(
                        |State(inbox): State<Arc<Mutex<Inbox>>>,
                         headers: HeaderMap,
                         body: Bytes| async move {
                            let mut inbox = inbox.lock().unwrap();
                            inbox.received.push(Received {
                                headers,
                                body: String::from_utf8_lossy(&body).into_owned(),
                                at: Instant::now(),
                            });
                            let status = inbox.answers.pop_front().unwrap_or(200);
                            StatusCode::from_u16(status).unwrap()
                        },
                    ),
                )
                .with_state(inbox.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://{addr}/hooks"),
            inbox,
        }
    }

    fn answer_with(&self, statuses: &[u16]) {
        self.inbox.lock().unwrap().answers.extend(statuses);
    }

    fn received(&self) -> Vec<Received> {
        self.inbox.lock().unwrap().received.clone()
    }

    /// Waits until `n` requests have arrived; returns them.
    async fn wait_for(&self, n: usize, secs: u64) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let received = self.received();
            if received.len() >= n {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} deliveries arrived: {received:?}",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn fast_world(attempts: u32, base_ms: u64) -> World {
    world_with("OPENAI", "gpt-4o-mini", |c| {
        c.webhook_poll_ms = 50;
        c.webhook_retry_base_ms = base_ms;
        c.webhook_max_attempts = attempts;
    })
    .await
}

const CREATE: &str = "mutation($i: CreateWebhookInput!) { createWebhook(input: $i) { secret webhook { id url events isActive description } } }";
const DELIVERIES: &str = "query($id: ID!) { webhook(id: $id) { deliveries(first: 50) { edges { node { id eventType payload status attemptCount nextAttemptAt deliveredAt attempts { at statusCode error durationMs } } } } } }";

/// Registers a webhook for `events`; returns (id, secret).
async fn register(w: &World, url: &str, events: &[&str]) -> (String, String) {
    let body = w
        .ask(CREATE, json!({"i": {"url": url, "events": events}}))
        .await;
    let id = id_at(&body, &["createWebhook", "webhook"]);
    let secret = body["data"]["createWebhook"]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    (id, secret)
}

async fn deliveries(w: &World, webhook: &str) -> Vec<Value> {
    let body = w.ask(DELIVERIES, json!({"id": webhook})).await;
    body["data"]["webhook"]["deliveries"]["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|e| e["node"].clone())
        .collect()
}

/// Runs the reference library over `(secret, delivery)` pairs; returns its lines.
async fn verify(pairs: &[(&str, &Received)]) -> Vec<String> {
    let list: Vec<Value> = pairs
        .iter()
        .map(|(secret, r)| {
            json!({
                "secret": secret,
                "headers": {
                    "webhook-id": r.header("webhook-id"),
                    "webhook-timestamp": r.header("webhook-timestamp"),
                    "webhook-signature": r.header("webhook-signature"),
                },
                "body": r.body,
            })
        })
        .collect();
    let path = std::env::temp_dir().join(format!("webhooks-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&path, serde_json::to_vec(&list).unwrap()).unwrap();
    let out = run_script(
        "verify-webhook.mjs",
        &[path.display().to_string()],
        Duration::from_secs(60),
    )
    .await;
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success(), "{out:?}");
    out.stdout.lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn deliveries_are_signed_the_standard_webhooks_way_and_the_reference_library_verifies_them() {
    let w = fast_world(3, 100).await;
    let receiver = Receiver::start().await;
    let (hook, secret) = register(
        &w,
        &receiver.url,
        &["EXECUTION_SUCCEEDED", "EXECUTION_FAILED"],
    )
    .await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    // The secret is shown once and stored encrypted.
    let stored = w
        .app
        .count("SELECT count(*) FROM webhooks WHERE position('whsec_'::bytea in secret_ciphertext) > 0")
        .await;
    assert_eq!(stored, 0);

    let run = w.start("Hello").await;
    assert_eq!(w.finished(&run).await["status"], "SUCCEEDED");
    let received = receiver.wait_for(1, 10).await;
    let first = &received[0];
    let body = first.json();
    assert_eq!(body["type"], "execution.succeeded", "{body}");
    assert_eq!(body["data"]["executionId"], run.as_str());
    assert_eq!(body["data"]["agentId"], w.agent_id.as_str());
    assert_eq!(body["data"]["status"], "SUCCEEDED");
    assert_eq!(body["data"]["outputTokens"], 4);
    assert_eq!(body["data"]["cost"], "0.000004");
    assert_eq!(first.header("content-type"), "application/json");
    // The delivery is visible with its attempt, under the id the header carried.
    let listed = deliveries(&w, &hook).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], first.header("webhook-id"));
    assert_eq!(listed[0]["status"], "DELIVERED", "{listed:?}");
    assert_eq!(listed[0]["attempts"][0]["statusCode"], 200);
    assert_eq!(listed[0]["payload"], body);

    // A test delivery, then a new secret: later deliveries are signed with it, not the old one.
    let test = w
        .ask(
            "mutation($id: ID!) { testWebhook(id: $id) { id eventType status } }",
            json!({"id": hook}),
        )
        .await;
    assert_eq!(
        test["data"]["testWebhook"]["eventType"], "webhook.test",
        "{test}"
    );
    let received = receiver.wait_for(2, 10).await;
    let rotated = w
        .ask(
            "mutation($id: ID!) { rotateWebhookSecret(id: $id) { secret } }",
            json!({"id": hook}),
        )
        .await;
    let new_secret = rotated["data"]["rotateWebhookSecret"]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_secret, secret);
    w.ask(
        "mutation($id: ID!) { testWebhook(id: $id) { id } }",
        json!({"id": hook}),
    )
    .await;
    let received = {
        let _ = received;
        receiver.wait_for(3, 10).await
    };
    let lines = verify(&[
        (&secret, &received[0]),
        (&secret, &received[1]),
        (&new_secret, &received[2]),
        (&secret, &received[2]),
    ])
    .await;
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0], "verified execution.succeeded");
    assert_eq!(lines[1], "verified webhook.test");
    assert_eq!(lines[2], "verified webhook.test");
    assert!(lines[3].starts_with("rejected"), "{lines:?}");
}

#[tokio::test]
async fn failed_deliveries_are_retried_with_backoff_and_survive_a_server_restart() {
    let mut w = fast_world(5, 400).await;
    let receiver = Receiver::start().await;
    receiver.answer_with(&[500, 503]);
    let (hook, _) = register(&w, &receiver.url, &["EXECUTION_SUCCEEDED"]).await;
    w.ask(
        "mutation($id: ID!) { testWebhook(id: $id) { id } }",
        json!({"id": hook}),
    )
    .await;
    // The first attempt fails; the server stops before the retry is due.
    receiver.wait_for(1, 10).await;
    w.app.stop().await;
    // A new server on the same database finds the delivery in the queue and retries it.
    let second = w.app.sibling().await;
    let received = receiver.wait_for(3, 20).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received_later = receiver.received();
    assert_eq!(received_later.len(), 3, "{received_later:?}");
    let id = received[0].header("webhook-id").to_owned();
    assert!(received.iter().all(|r| r.header("webhook-id") == id));
    // Six times longer each time: 400 ms, then 2.4 s.
    assert!(received[1].at - received[0].at >= Duration::from_millis(400));
    assert!(received[2].at - received[1].at >= Duration::from_millis(2400));
    let body = second
        .gql_as(Some(&w.user.access), DELIVERIES, json!({"id": hook}))
        .await;
    let delivery = &body["data"]["webhook"]["deliveries"]["edges"][0]["node"];
    assert_eq!(delivery["status"], "DELIVERED", "{body}");
    assert_eq!(delivery["attemptCount"], 3);
    let attempts = delivery["attempts"].as_array().unwrap();
    let codes: Vec<&Value> = attempts.iter().map(|a| &a["statusCode"]).collect();
    assert_eq!(codes, [&json!(500), &json!(503), &json!(200)]);
    assert_eq!(attempts[0]["error"], "the endpoint answered HTTP 500");
    assert_eq!(attempts[2]["error"], Value::Null);
    assert!(delivery["deliveredAt"].is_string());
}

#[tokio::test]
async fn a_delivery_is_given_up_after_its_attempts_and_an_inactive_webhook_queues_nothing() {
    let w = fast_world(2, 100).await;
    let receiver = Receiver::start().await;
    receiver.answer_with(&[503, 503, 503]);
    let (hook, _) = register(&w, &receiver.url, &["EXECUTION_SUCCEEDED"]).await;
    let run = w.start("Hello").await;
    w.finished(&run).await;
    receiver.wait_for(2, 10).await;
    let mut listed = Vec::new();
    for _ in 0..100 {
        listed = deliveries(&w, &hook).await;
        if listed[0]["status"] == "FAILED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(listed[0]["status"], "FAILED", "{listed:?}");
    assert_eq!(listed[0]["attemptCount"], 2);
    assert_eq!(listed[0]["nextAttemptAt"], Value::Null);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 2, "no third attempt");

    // Inactive: runs end without a delivery.
    let body = w
        .ask(
            "mutation($id: ID!) { updateWebhook(id: $id, input: {isActive: false}) { isActive } }",
            json!({"id": hook}),
        )
        .await;
    assert_eq!(body["data"]["updateWebhook"]["isActive"], false, "{body}");
    let run = w.start("Hello again").await;
    w.finished(&run).await;
    assert_eq!(
        w.app.count("SELECT count(*) FROM webhook_deliveries").await,
        1
    );
}

#[tokio::test]
async fn a_pending_delivery_of_a_webhook_made_inactive_ends_failed_with_the_reason_and_tests_still_go_out()
 {
    let w = fast_world(5, 1500).await;
    let receiver = Receiver::start().await;
    receiver.answer_with(&[500]);
    let (hook, _) = register(&w, &receiver.url, &["EXECUTION_SUCCEEDED"]).await;
    let run = w.start("Hello").await;
    w.finished(&run).await;
    receiver.wait_for(1, 10).await;
    let body = w
        .ask(
            "mutation($id: ID!) { updateWebhook(id: $id, input: {isActive: false}) { isActive url } }",
            json!({"id": hook}),
        )
        .await;
    // Only the field given changed.
    assert_eq!(
        body["data"]["updateWebhook"]["url"],
        receiver.url.as_str(),
        "{body}"
    );
    let mut listed = Vec::new();
    for _ in 0..200 {
        listed = deliveries(&w, &hook).await;
        if listed[0]["status"] == "FAILED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(listed[0]["status"], "FAILED", "{listed:?}");
    assert_eq!(listed[0]["attemptCount"], 2);
    assert_eq!(
        listed[0]["attempts"][1]["error"],
        "not sent: the webhook is inactive"
    );
    assert_eq!(receiver.received().len(), 1, "nothing more was sent");
    // A test delivery goes out to an inactive webhook all the same.
    w.ask(
        "mutation($id: ID!) { testWebhook(id: $id) { id } }",
        json!({"id": hook}),
    )
    .await;
    let received = receiver.wait_for(2, 10).await;
    assert_eq!(received[1].json()["type"], "webhook.test");
}

#[tokio::test]
async fn budget_alerts_and_keys_rejected_by_the_provider_are_delivered() {
    let w = fast_world(3, 100).await;
    let receiver = Receiver::start().await;
    register(
        &w,
        &receiver.url,
        &["BUDGET_WARNING", "BUDGET_EXCEEDED", "API_KEY_REJECTED"],
    )
    .await;
    // 450 micro-dollars a run against a limit of 500: the first run reaches 90%, the second
    // passes 100%.
    w.fake.set_stream(StreamScript {
        input_tokens: 1000,
        output_tokens: 500,
        ..StreamScript::default()
    });
    let body = w
        .ask(
            "mutation { setBudget(input: {scope: USER, monthlyLimit: \"0.0005\"}) { id } }",
            json!({}),
        )
        .await;
    let budget = id_at(&body, &["setBudget"]);
    for _ in 0..2 {
        let run = w.start("Hello").await;
        assert_eq!(w.finished(&run).await["status"], "SUCCEEDED");
    }
    let received = receiver.wait_for(2, 10).await;
    let warning = received[0].json();
    assert_eq!(warning["type"], "budget.warning", "{warning}");
    assert_eq!(warning["data"]["budgetId"], budget.as_str());
    assert_eq!(warning["data"]["percent"], 80);
    assert_eq!(warning["data"]["spentThisMonth"], "0.000450");
    assert_eq!(warning["data"]["monthlyLimit"], "0.000500");
    let exceeded = received[1].json();
    assert_eq!(exceeded["type"], "budget.exceeded", "{exceeded}");
    assert_eq!(exceeded["data"]["spentThisMonth"], "0.000900");
    // Each alert goes out once a month: a refused run sends nothing more.
    assert_eq!(code(&w.execute("Hello").await), "BUDGET_EXCEEDED");
    // Raising the limit starts the alerts over from the month's spend: 900 of 1,000 is 90%,
    // the warning level, so the next crossing is the 100% one.
    w.ask(
        "mutation { setBudget(input: {scope: USER, monthlyLimit: \"0.001\"}) { id } }",
        json!({}),
    )
    .await;
    assert_eq!(
        w.app
            .count("SELECT alerted_percent::bigint FROM budgets")
            .await,
        80
    );

    // The provider rejects the key, in a run and in a key test.
    w.ask(
        "mutation($id: ID!) { deleteBudget(id: $id) }",
        json!({"id": budget}),
    )
    .await;
    w.fake.set_mode(Mode::Status {
        status: 401,
        retry_after_secs: None,
    });
    let run = w.start("Hello").await;
    assert_eq!(w.finished(&run).await["status"], "FAILED");
    let received = receiver.wait_for(3, 10).await;
    let rejected = received[2].json();
    assert_eq!(rejected["type"], "api_key.rejected", "{rejected}");
    assert_eq!(rejected["data"]["apiKeyId"], w.key_id.as_str());
    assert_eq!(rejected["data"]["executionId"], run.as_str());
    let test = w
        .ask(
            "mutation($id: ID!) { testApiKey(id: $id) { ok } }",
            json!({"id": w.key_id}),
        )
        .await;
    assert_eq!(test["data"]["testApiKey"]["ok"], false, "{test}");
    let received = receiver.wait_for(4, 10).await;
    let rejected = received[3].json();
    assert_eq!(rejected["type"], "api_key.rejected");
    assert_eq!(rejected["data"]["executionId"], Value::Null);
    assert_eq!(receiver.received().len(), 4);
}

#[tokio::test]
async fn webhook_rules_name_the_field_and_another_users_webhooks_are_out_of_reach() {
    let w = fast_world(3, 100).await;
    let receiver = Receiver::start().await;
    let before = w.app.count("SELECT count(*) FROM webhooks").await;
    for (input, expected) in [
        (
            json!({"url": "ftp://example.com/x", "events": ["EXECUTION_FAILED"]}),
            "input.url",
        ),
        (
            json!({"url": "not a url", "events": ["EXECUTION_FAILED"]}),
            "input.url",
        ),
        (
            json!({"url": "https://user:pw@example.com/x", "events": ["EXECUTION_FAILED"]}),
            "input.url",
        ),
        // Cloud metadata and private networks are refused by the egress policy.
        (
            json!({"url": "http://169.254.169.254/latest", "events": ["EXECUTION_FAILED"]}),
            "input.url",
        ),
        (
            json!({"url": "https://10.0.0.8/hooks", "events": ["EXECUTION_FAILED"]}),
            "input.url",
        ),
        (json!({"url": receiver.url, "events": []}), "input.events"),
        (
            json!({"url": receiver.url, "events": ["WEBHOOK_TEST"]}),
            "input.events",
        ),
        (
            json!({"url": receiver.url, "events": ["EXECUTION_FAILED", "EXECUTION_FAILED"]}),
            "input.events",
        ),
        (
            json!({"url": receiver.url, "events": ["EXECUTION_FAILED"], "description": "x".repeat(501)}),
            "input.description",
        ),
    ] {
        let body = w.ask(CREATE, json!({"i": input.clone()})).await;
        assert_eq!(code(&body), "BAD_USER_INPUT", "{input}: {body}");
        assert_eq!(field(&body), expected, "{input}: {body}");
    }
    assert_eq!(w.app.count("SELECT count(*) FROM webhooks").await, before);
    // At most ten per user.
    let mut first = String::new();
    for i in 0..10 {
        let (id, _) = register(&w, &receiver.url, &["EXECUTION_FAILED"]).await;
        if i == 0 {
            first = id;
        }
    }
    let body = w
        .ask(
            CREATE,
            json!({"i": {"url": receiver.url, "events": ["EXECUTION_FAILED"]}}),
        )
        .await;
    assert_eq!(code(&body), "CONFLICT", "{body}");

    // updateWebhook keeps the same rules, and a refused change changes nothing.
    for (input, expected) in [
        (json!({"url": "http://169.254.169.254/latest"}), "input.url"),
        (json!({"events": []}), "input.events"),
    ] {
        let body = w
            .ask(
                "mutation($id: ID!, $i: UpdateWebhookInput!) { updateWebhook(id: $id, input: $i) { id } }",
                json!({"id": first, "i": input.clone()}),
            )
            .await;
        assert_eq!(field(&body), expected, "{input}: {body}");
    }
    let kept = w
        .ask(
            "query($id: ID!) { webhook(id: $id) { url events } }",
            json!({"id": first}),
        )
        .await;
    assert_eq!(
        kept["data"]["webhook"]["url"],
        receiver.url.as_str(),
        "{kept}"
    );
    assert_eq!(
        kept["data"]["webhook"]["events"],
        json!(["EXECUTION_FAILED"])
    );

    // Another user sees none of it and can change none of it.
    let eve = w.app.register("eve@example.com").await;
    let as_eve = |query: &'static str| {
        let app = &w.app;
        let token = eve.access.clone();
        let id = first.clone();
        async move { app.gql_as(Some(&token), query, json!({"id": id})).await }
    };
    let body = as_eve("query($id: ID!) { webhook(id: $id) { id } }").await;
    assert_eq!(body["data"]["webhook"], Value::Null, "{body}");
    let body = as_eve("query($id: ID!) { webhooks { id } webhook(id: $id) { id } }").await;
    assert_eq!(body["data"]["webhooks"], json!([]), "{body}");
    for mutation in [
        "mutation($id: ID!) { deleteWebhook(id: $id) }",
        "mutation($id: ID!) { testWebhook(id: $id) { id } }",
        "mutation($id: ID!) { rotateWebhookSecret(id: $id) { secret } }",
        "mutation($id: ID!) { updateWebhook(id: $id, input: {isActive: false}) { id } }",
    ] {
        let body = as_eve(mutation).await;
        assert_eq!(code(&body), "NOT_FOUND", "{mutation}: {body}");
    }
    assert_eq!(
        w.app
            .count("SELECT count(*) FROM webhooks WHERE is_active")
            .await,
        10
    );
    let body = w
        .ask(
            "mutation($id: ID!) { deleteWebhook(id: $id) }",
            json!({"id": first}),
        )
        .await;
    assert_eq!(body["data"]["deleteWebhook"], true, "{body}");
}

#[tokio::test]
async fn production_accepts_only_https_webhook_urls() {
    let app = crate::common::TestApp::spawn_with(|c| {
        c.environment = agentry::config::Environment::Production;
        c.bcrypt_cost = 10;
    })
    .await;
    let user = app.register("prod-hooks@example.com").await;
    let body = app
        .gql_as(
            Some(&user.access),
            CREATE,
            json!({"i": {"url": "http://example.com/hooks", "events": ["EXECUTION_FAILED"]}}),
        )
        .await;
    assert_eq!(field(&body), "input.url", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("https"),
        "{body}"
    );
    let body = app
        .gql_as(
            Some(&user.access),
            CREATE,
            json!({"i": {"url": "https://example.com/hooks", "events": ["EXECUTION_FAILED"]}}),
        )
        .await;
    assert!(body["errors"].is_null(), "{body}");
}
