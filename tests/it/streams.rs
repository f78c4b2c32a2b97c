//! Live streams under pressure: a subscriber that falls behind, a database that restarts
//! mid-stream, slow runs that must not hold the pool, and every bound a user or a provider
//! controls (output per run, subscriptions per connection and per user, connections per address
//! and in total, idle anonymous sockets, dead peers, slow readers).

mod bounds;
mod shared;

use crate::common;
use crate::executions::{sequences, slow, subscribe, text, world_with};

use std::time::Duration;

use agentry::{
    executions::{
        live,
        model::{EventKind, EventRow},
    },
    request::Identity,
};
use common::{
    ALLOWED_ORIGIN, TestApp, WsEvent, code,
    db_proxy::DbProxy,
    fake_provider::{FakeProvider, StreamScript},
    id_at,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, protocol::Message};

fn bearer(token: &str) -> Value {
    json!({ "Authorization": format!("Bearer {token}") })
}

/// A signed-in graphql-transport-ws socket.
async fn signed_in(app: &TestApp, token: &str) -> common::Ws {
    let mut ws = app
        .ws("graphql-transport-ws", Some(ALLOWED_ORIGIN))
        .await
        .expect("connect");
    match ws.init(bearer(token)).await {
        WsEvent::Json(m) if m["type"] == "connection_ack" => ws,
        other => panic!("no ack: {other:?}"),
    }
}

/// Subscribes to the viewer's status feed under `id` (a subscription that never completes).
async fn follow_updates(ws: &mut common::Ws, id: &str) {
    ws.send(json!({"id": id, "type": "subscribe", "payload": {"query": "subscription { executionUpdates { id status } }"}}))
        .await;
}

/// Proves the socket still serves requests: a query round trip under `id`.
async fn round_trip(ws: &mut common::Ws, id: &str) {
    ws.send(json!({"id": id, "type": "subscribe", "payload": {"query": "{ __typename }"}}))
        .await;
    loop {
        match ws.next(5).await {
            WsEvent::Json(m) if m["id"] == id && m["type"] == "next" => {}
            WsEvent::Json(m) if m["id"] == id && m["type"] == "complete" => return,
            WsEvent::Json(m) if m["id"] != id => {} // another operation's message
            other => panic!("round trip {id}: {other:?}"),
        }
    }
}

/// The `error` message answering operation `id`.
async fn refused(ws: &mut common::Ws, id: &str) -> Value {
    loop {
        match ws.next(5).await {
            WsEvent::Json(m) if m["type"] == "error" && m["id"] == id => {
                return m["payload"].clone();
            }
            // The server confirms a `complete` the client sent.
            WsEvent::Json(m) if m["type"] == "complete" && m["id"] != id => {}
            other => panic!("expected a refusal of {id}, got {other:?}"),
        }
    }
}

/// A key for the fake provider and an agent using it, for `user`; returns the agent's id.
async fn agent_of(app: &TestApp, user: &common::Session) -> String {
    let key = app
        .gql_as(
            Some(&user.access),
            "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { id } }",
            json!({"i": {"name": "key", "provider": "OPENAI", "secret": crate::executions::OPENAI_KEY}}),
        )
        .await;
    let agent = app
        .gql_as(
            Some(&user.access),
            "mutation($i: CreateAgentInput!) { createAgent(input: $i) { id } }",
            json!({"i": {"name": "Streamer", "role": "r", "goal": "g", "apiKeyId": key["data"]["createApiKey"]["id"], "model": "gpt-4o-mini"}}),
        )
        .await;
    id_at(&agent, &["createAgent"])
}

/// A RUNNING run of the world's user that no runner writes to (the test writes its events).
async fn quiet_run(w: &crate::executions::World, input: &str) -> uuid::Uuid {
    let run = uuid::Uuid::new_v4();
    w.app
        .sql(&format!(
            "INSERT INTO executions (id, user_id, agent_id, api_key_id, provider, model, status, input, started_at) \
             VALUES ('{run}', '{}', '{}', '{}', 'OPENAI', 'gpt-4o-mini', 'RUNNING', '{input}', now())",
            w.user.user_id, w.agent_id, w.key_id
        ))
        .await;
    run
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_the_feed_still_gets_every_event_exactly_once() {
    let w = world_with("OPENAI", "gpt-4o-mini", |c| c.execution_heartbeat_secs = 60).await;
    let state = &w.app.state;
    // A run no runner writes to: the test is the writer, so it can outpace the subscriber.
    let run = quiet_run(&w, "lag").await;
    let Identity::User(viewer) = agentry::users::sessions::authenticate(state, &w.user.access)
        .await
        .unwrap()
    else {
        panic!("the test user is not signed in");
    };
    let stream = live::events(state, &viewer, run, 0).await.unwrap();
    futures_util::pin_mut!(stream);
    // The replay finds nothing and the subscriber starts following the feed.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.next())
            .await
            .is_err()
    );

    // 1,500 events (more than the feed holds) while the subscriber reads nothing, then the end.
    const EVENTS: i32 = 1500;
    w.app
        .sql(&format!(
            "INSERT INTO execution_events (execution_id, sequence, kind, delta) \
             SELECT '{run}', n, 'OUTPUT_DELTA', 't' || n || ' ' FROM generate_series(1, {EVENTS}) n; \
             INSERT INTO execution_events (execution_id, sequence, kind) VALUES ('{run}', {}, 'COMPLETED'); \
             UPDATE executions SET status = 'SUCCEEDED', last_sequence = {}, finished_at = now() WHERE id = '{run}'",
            EVENTS + 1,
            EVENTS + 1
        ))
        .await;
    for sequence in 1..=EVENTS + 1 {
        let terminal = sequence > EVENTS;
        state.hub.publish(EventRow {
            execution_id: run,
            sequence,
            kind: if terminal {
                EventKind::Completed
            } else {
                EventKind::OutputDelta
            },
            delta: (!terminal).then(|| format!("t{sequence} ")),
            data: None,
            at: chrono::Utc::now(),
        });
    }

    let received: Vec<_> =
        tokio::time::timeout(Duration::from_secs(20), stream.collect::<Vec<_>>())
            .await
            .expect("the stream ends after the terminal event");
    let received: Vec<_> = received.into_iter().map(Result::unwrap).collect();
    let got: Vec<i32> = received.iter().map(|e| e.sequence).collect();
    assert_eq!(got, (1..=EVENTS + 1).collect::<Vec<_>>());
    assert_eq!(received.last().unwrap().kind, EventKind::Completed);
}

#[tokio::test]
async fn a_statement_cut_in_flight_is_retried_on_a_fresh_connection() {
    // The runner's writes and the subscribers' reads go through `patient`: a connection cut
    // while its statement runs (a restart, a failover) must cost a retry, never the run.
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    let direct = TestApp::spawn().await;
    let proxy = DbProxy::start(&direct.database_url).await;
    let pool = agentry::db::pool(
        &proxy.url_for(&direct.database_url),
        2,
        agentry::db::QueryCounter::default(),
        false,
    )
    .unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let statement = agentry::db::patient(&pool, Duration::from_secs(10), "a test", move |conn| {
        counted.fetch_add(1, Ordering::SeqCst);
        let sleep = diesel::sql_query("SELECT pg_sleep(0.6)");
        Box::pin(diesel_async::RunQueryDsl::execute(sleep, conn))
    });
    let outage = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.down(); // the statement is running: its connection is cut under it
        tokio::time::sleep(Duration::from_millis(200)).await;
        proxy.up();
    };
    let (result, ()) = tokio::join!(statement, outage);
    assert!(result.is_ok(), "the cut statement was retried: {result:?}");
    assert!(attempts.load(Ordering::SeqCst) >= 2, "it ran again");
}

#[tokio::test]
async fn a_database_restart_mid_stream_loses_no_token_and_the_run_finishes() {
    let direct = TestApp::spawn().await;
    let proxy = DbProxy::start(&direct.database_url).await;
    let through = proxy.url_for(&direct.database_url);
    let fake = FakeProvider::start().await;
    fake.accept_key(crate::executions::OPENAI_KEY);
    let app = direct
        .sibling_with(|c| {
            c.database_url = through;
            fake.serve_all_providers(c);
            c.provider_timeout_secs = 10;
            c.execution_heartbeat_secs = 30;
        })
        .await;
    let user = app.register("restart@example.com").await;
    let agent_id = agent_of(&app, &user).await;
    let tokens: Vec<String> = (0..60).map(|i| format!("w{i} ")).collect();
    fake.set_stream(StreamScript {
        tokens: tokens.clone(),
        delay_per_token: Duration::from_millis(50),
        ..StreamScript::default()
    });
    let started = app
        .gql_as(
            Some(&user.access),
            "mutation($a: ID!) { executeAgent(agentId: $a, input: \"go\") { id } }",
            json!({"a": agent_id}),
        )
        .await;
    let id = id_at(&started, &["executeAgent"]);

    let watcher = subscribe(&app, &user.access, &id, None);
    let outage = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        proxy.down(); // every pooled and listening connection is cut, new ones refused
        tokio::time::sleep(Duration::from_millis(1500)).await;
        proxy.up();
    };
    let (events, ()) = tokio::join!(watcher, outage);
    let events = events.expect("the subscription survives the outage");
    let expected: Vec<i64> = (1..=events.len() as i64).collect();
    assert_eq!(sequences(&events), expected, "no gap, no duplicate");
    assert_eq!(text(&events), tokens.concat());
    assert_eq!(events.last().unwrap()["kind"], "COMPLETED");
    let stored = direct
        .db()
        .await
        .query_one(
            "SELECT status, output FROM executions WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(stored.get::<_, String>(0), "SUCCEEDED");
    assert_eq!(stored.get::<_, String>(1), tokens.concat());
}

#[tokio::test]
async fn slow_runs_of_a_few_users_do_not_hold_the_pool_from_everyone_else() {
    // Four connections in the pool; sixteen runs trickling one token every five seconds.
    let w = world_with("OPENAI", "gpt-4o-mini", |c| {
        c.db_pool_size = 4;
        c.provider_timeout_secs = 30;
        c.max_concurrent_executions = 4;
    })
    .await;
    w.fake.set_stream(slow(&["slow ", "tokens"], 5000));
    let mut slow_runs = Vec::new();
    for n in 0..4 {
        let owner = w.app.register(&format!("trickle{n}@example.com")).await;
        let agent_id = agent_of(&w.app, &owner).await;
        for _ in 0..4 {
            let run = w
                .app
                .gql_as(
                    Some(&owner.access),
                    "mutation($a: ID!) { executeAgent(agentId: $a, input: \"slow\") { id } }",
                    json!({"a": agent_id}),
                )
                .await;
            slow_runs.push(id_at(&run, &["executeAgent"]));
        }
    }
    // Every slow run is open at the provider before the others arrive.
    for _ in 0..200 {
        if w.fake.requests().len() >= 16 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(w.fake.requests().len() >= 16, "the slow runs did not start");

    // Fifty other users: `me` and `executeAgent` all answer.
    let others = futures_util::future::join_all((0..50).map(|n| {
        let w = &w;
        async move {
            let user = w.app.register(&format!("other{n}@example.com")).await;
            let me = w
                .app
                .gql_as(Some(&user.access), "{ me { id } }", json!({}))
                .await;
            assert_eq!(me["data"]["me"]["id"], user.user_id.as_str(), "{me}");
            user
        }
    }));
    let others = tokio::time::timeout(Duration::from_secs(60), others)
        .await
        .expect("other users are served while slow runs stream");
    let runs = futures_util::future::join_all(others.iter().take(50).map(|_| w.execute("quick")));
    let runs = tokio::time::timeout(Duration::from_secs(60), runs)
        .await
        .expect("executeAgent answers while slow runs stream");
    // The world's user may have four runs at once; the rest are refused by the cap, not the pool.
    let started = runs
        .iter()
        .filter(|r| r["data"]["executeAgent"]["id"].is_string())
        .count();
    assert_eq!(
        started,
        4,
        "{:?}",
        runs.iter().find(|r| r["errors"].is_array())
    );
    for refused in runs.iter().filter(|r| r["errors"].is_array()) {
        assert_eq!(code(refused), "RATE_LIMITED", "{refused}");
    }
    // The slow runs are still streaming, none failed for want of a connection.
    let open = w
        .app
        .count("SELECT count(*) FROM executions WHERE status = 'RUNNING' AND input = 'slow'")
        .await;
    assert_eq!(open, 16);
}

#[tokio::test]
async fn a_run_past_the_output_cap_fails_with_a_clear_error_and_keeps_its_output() {
    let w = world_with("OPENAI", "gpt-4o-mini", |c| {
        c.max_output_bytes = 20;
        c.stream_flush_ms = 0;
    })
    .await;
    w.fake.set_stream(StreamScript {
        tokens: ["Hello", ", world", "! And", " then some more"]
            .map(String::from)
            .to_vec(),
        ..StreamScript::default()
    });
    let id = w.start("long").await;
    let run = w.finished(&id).await;
    assert_eq!(run["status"], "FAILED", "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(error.contains("20 bytes"), "{error}");
    assert!(error.contains("AGENTRY_MAX_OUTPUT_BYTES"), "{error}");
    assert_eq!(
        run["output"], "Hello, world! And",
        "the output before the cap is kept"
    );
}

#[tokio::test]
async fn a_provider_event_over_the_size_cap_ends_the_run_failed_with_the_setting_named() {
    // A CUSTOM endpoint whose stream sends one token, then a `data:` line that never ends.
    let base = crate::llm::raw_provider(|| {
        axum::response::Response::builder()
            .header("content-type", "text/event-stream")
            .body(crate::llm::endless(
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"",
                "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            ))
            .unwrap()
    })
    .await;
    let app = TestApp::spawn_with(|c| {
        c.sse_max_event_bytes = 4096;
        c.provider_timeout_secs = 30;
    })
    .await;
    let user = app.register("big-event@example.com").await;
    let key = app
        .gql_as(
            Some(&user.access),
            "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { id } }",
            json!({"i": {"name": "custom", "provider": "CUSTOM", "secret": "token", "endpoint": base}}),
        )
        .await;
    let agent = app
        .gql_as(
            Some(&user.access),
            "mutation($i: CreateAgentInput!) { createAgent(input: $i) { id } }",
            json!({"i": {"name": "Big", "role": "r", "goal": "g", "apiKeyId": key["data"]["createApiKey"]["id"], "model": "any"}}),
        )
        .await;
    let run = app
        .gql_as(
            Some(&user.access),
            "mutation($a: ID!) { executeAgent(agentId: $a, input: \"go\") { id } }",
            json!({"a": agent["data"]["createAgent"]["id"]}),
        )
        .await;
    let id = run["data"]["executeAgent"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{run}"));
    let events = subscribe(&app, &user.access, id, None).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last["kind"], "FAILED", "{last}");
    assert!(
        last["data"]["error"]
            .as_str()
            .unwrap()
            .contains("AGENTRY_SSE_MAX_EVENT_BYTES"),
        "{last}"
    );
    assert_eq!(
        text(&events),
        "Hi",
        "the output before the oversized event is kept"
    );
}

#[tokio::test]
async fn after_a_quiet_spell_a_token_is_written_at_once_whatever_the_batching_window() {
    // A two-second window would hold the first token back if batching were not adaptive.
    let w = world_with("OPENAI", "gpt-4o-mini", |c| {
        c.stream_flush_ms = 2000;
        c.provider_timeout_secs = 5;
    })
    .await;
    w.fake
        .set_stream(slow(&["first", " second", " third"], 300));
    let id = w.start("quiet").await;
    w.finished(&id).await;
    let events = w.events(&id).await;
    let deltas: Vec<&str> = events.iter().filter_map(|e| e["delta"].as_str()).collect();
    assert_eq!(deltas[0], "first", "{deltas:?}");
    // Tokens arriving inside the window after it are coalesced.
    assert_eq!(deltas[1..].concat(), " second third");
    assert_eq!(deltas.len(), 2, "{deltas:?}");
}

#[tokio::test]
async fn while_watchers_have_not_taken_the_last_event_the_runner_coalesces_more() {
    // 100 tokens, one every 10 ms, with a 20 ms batching window.
    let w = world_with("OPENAI", "gpt-4o-mini", |c| {
        c.stream_flush_ms = 20;
        c.provider_timeout_secs = 10;
    })
    .await;
    let tokens: Vec<String> = (0..100).map(|i| format!("t{i} ")).collect();
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let whole = tokens.concat();
    let deltas = |events: &[Value]| {
        events
            .iter()
            .filter(|e| e["kind"] == "OUTPUT_DELTA")
            .count()
    };

    // Watchers that keep up: an event per window.
    w.fake.set_stream(slow(&tokens, 10));
    let free = w.start("free").await;
    assert_eq!(w.finished(&free).await["status"], "SUCCEEDED");
    let free_events = w.events(&free).await;
    assert_eq!(text(&free_events), whole);

    // A watcher of this server that takes nothing: every event stays queued for it, so the
    // runner waits (up to its cap) before writing the next, and the run is fewer, larger events.
    w.fake.set_stream(slow(&tokens, 10));
    let stalled = w.start("stalled").await;
    let follow = w.app.state.hub.follow_run(stalled.parse().unwrap());
    assert_eq!(w.finished(&stalled).await["status"], "SUCCEEDED");
    drop(follow);
    let stalled_events = w.events(&stalled).await;
    assert_eq!(text(&stalled_events), whole, "nothing is lost by waiting");

    let (free, stalled) = (deltas(&free_events), deltas(&stalled_events));
    assert!(
        free >= 25,
        "watchers keeping up get an event per window: {free}"
    );
    assert!(
        stalled <= 12,
        "a backlog coalesces up to 200 ms of tokens per event: {stalled} events (free: {free})"
    );
    // ~1 s of tokens at most 200 ms apart: the wait is capped, not held until the run ends.
    assert!(
        stalled >= 4,
        "a watcher that never reads holds each delta 200 ms at most: {stalled} events"
    );
}
