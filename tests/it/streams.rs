//! Live streams under pressure: a subscriber that falls behind, a database that restarts
//! mid-stream, slow runs that must not hold the pool, and every bound a user or a provider
//! controls (output per run, subscriptions per connection and per user, connections per address
//! and in total, idle anonymous sockets, dead peers, slow readers).

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

#[tokio::test]
async fn a_subscriber_that_falls_behind_the_feed_still_gets_every_event_exactly_once() {
    let w = world_with("OPENAI", "gpt-4o-mini", |c| c.execution_heartbeat_secs = 60).await;
    let state = &w.app.state;
    // A run no runner writes to: the test is the writer, so it can outpace the subscriber.
    let run = uuid::Uuid::new_v4();
    w.app
        .sql(&format!(
            "INSERT INTO executions (id, user_id, agent_id, api_key_id, provider, model, status, input, started_at) \
             VALUES ('{run}', '{}', '{}', '{}', 'OPENAI', 'gpt-4o-mini', 'RUNNING', 'lag', now())",
            w.user.user_id, w.agent_id, w.key_id
        ))
        .await;
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
async fn subscriptions_per_connection_and_per_user_are_bounded_and_refusals_name_the_limit() {
    let app = TestApp::spawn_with(|c| {
        c.ws_max_subscriptions = 2;
        c.ws_max_subscriptions_per_user = 3;
    })
    .await;
    let user = app.register("many-subs@example.com").await;
    let mut first = signed_in(&app, &user.access).await;
    follow_updates(&mut first, "a").await;
    follow_updates(&mut first, "b").await;
    follow_updates(&mut first, "c").await;
    let refusal = refused(&mut first, "c").await;
    assert_eq!(
        refusal[0]["extensions"]["code"], "RATE_LIMITED",
        "{refusal}"
    );
    assert!(
        refusal[0]["message"].as_str().unwrap().contains("2"),
        "{refusal}"
    );
    // The connection stays usable, and ending one subscription frees its slot: `d` takes it
    // (were it refused, its error would come before `e`'s).
    first.send(json!({"id": "a", "type": "complete"})).await;
    follow_updates(&mut first, "d").await;
    follow_updates(&mut first, "e").await;
    let refusal = refused(&mut first, "e").await;
    assert_eq!(
        refusal[0]["extensions"]["code"], "RATE_LIMITED",
        "{refusal}"
    );

    // Across connections: the user has 2 open; one more fits, the next does not.
    let mut second = signed_in(&app, &user.access).await;
    follow_updates(&mut second, "f").await;
    follow_updates(&mut second, "g").await;
    let refusal = refused(&mut second, "g").await;
    assert_eq!(
        refusal[0]["extensions"]["code"], "RATE_LIMITED",
        "{refusal}"
    );
    assert!(
        refusal[0]["message"]
            .as_str()
            .unwrap()
            .contains("AGENTRY_WS_MAX_SUBSCRIPTIONS_PER_USER"),
        "{refusal}"
    );

    // Another user is not affected.
    let other = app.register("other-subs@example.com").await;
    let mut third = signed_in(&app, &other.access).await;
    follow_updates(&mut third, "g").await;
    round_trip(&mut third, "q3").await;
}

/// The HTTP status of a refused WebSocket upgrade and its Retry-After header.
fn refused_upgrade(result: Result<common::Ws, tungstenite::Error>) -> (u16, Option<String>) {
    match result {
        Err(tungstenite::Error::Http(response)) => (
            response.status().as_u16(),
            response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned()),
        ),
        Err(other) => panic!("refused otherwise: {other}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

#[tokio::test]
async fn websocket_connections_are_bounded_per_address_and_in_total() {
    let app = TestApp::spawn_with(|c| {
        c.ws_max_connections = 3;
        c.ws_max_connections_per_ip = 2;
    })
    .await;
    let a = app.ws("graphql-transport-ws", None).await.unwrap();
    let _b = app.ws("graphql-transport-ws", None).await.unwrap();
    let (status, retry) = refused_upgrade(app.ws("graphql-transport-ws", None).await);
    assert_eq!(status, 429);
    assert!(retry.is_some());
    // A closed connection frees its place.
    drop(a);
    let mut reopened = None;
    for _ in 0..50 {
        if let Ok(ws) = app.ws("graphql-transport-ws", None).await {
            reopened = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        reopened.is_some(),
        "the closed connection's place was not freed"
    );

    let total = TestApp::spawn_with(|c| {
        c.ws_max_connections = 2;
        c.ws_max_connections_per_ip = 10;
    })
    .await;
    let _c = total.ws("graphql-transport-ws", None).await.unwrap();
    let _d = total.ws("graphql-transport-ws", None).await.unwrap();
    let (status, retry) = refused_upgrade(total.ws("graphql-transport-ws", None).await);
    assert_eq!(status, 503);
    assert!(retry.is_some());
}

#[tokio::test]
async fn an_idle_anonymous_socket_is_closed_with_4408_but_a_signed_in_one_stays() {
    let app = TestApp::spawn_with(|c| c.ws_anonymous_idle_secs = 1).await;
    let mut anonymous = app.ws("graphql-transport-ws", None).await.unwrap();
    match anonymous.init(json!({})).await {
        WsEvent::Json(m) => assert_eq!(m["type"], "connection_ack", "{m}"),
        other => panic!("{other:?}"),
    }
    // Anonymous sockets may not follow anything that needs a user.
    follow_updates(&mut anonymous, "u").await;
    match anonymous.next(5).await {
        WsEvent::Json(m) => {
            let errors = if m["type"] == "error" {
                m["payload"].clone()
            } else {
                m["payload"]["errors"].clone()
            };
            assert_eq!(errors[0]["extensions"]["code"], "UNAUTHENTICATED", "{m}");
        }
        other => panic!("{other:?}"),
    }
    match anonymous.next(5).await {
        WsEvent::Json(m) if m["type"] == "complete" => match anonymous.next(5).await {
            WsEvent::Closed(code, reason) => assert_eq!(code, 4408, "{reason}"),
            other => panic!("{other:?}"),
        },
        WsEvent::Closed(code, reason) => assert_eq!(code, 4408, "{reason}"),
        other => panic!("{other:?}"),
    }

    let user = app.register("stays@example.com").await;
    let mut signed = signed_in(&app, &user.access).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    round_trip(&mut signed, "still-here").await;
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_dropped_and_one_that_answers_is_kept() {
    let app = TestApp::spawn_with(|c| c.ws_keepalive_secs = 1).await;
    let user = app.register("pings@example.com").await;
    // Reading answers pings (the client library pongs as it reads).
    let mut alive = signed_in(&app, &user.access).await;
    let quiet = tokio::time::timeout(Duration::from_millis(3500), alive.next(10)).await;
    assert!(quiet.is_err(), "a live peer was closed: {quiet:?}");
    round_trip(&mut alive, "alive").await;

    // Not reading at all: no pong for two intervals, and the server lets the connection go.
    let mut silent = signed_in(&app, &user.access).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    match silent.next(5).await {
        WsEvent::Ended | WsEvent::Closed(..) => {}
        WsEvent::Json(m) => panic!("the silent peer was still served: {m}"),
    }
}

/// A graphql-transport-ws socket whose receive buffer is tiny, signed in, with raw access.
async fn tiny_buffer_socket(
    app: &TestApp,
    token: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(app.addr).await.unwrap();
    let mut request = format!("ws://{}/graphql", app.addr)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    ws.send(Message::Text(
        json!({"type": "connection_init", "payload": bearer(token)})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    match ws.next().await {
        Some(Ok(Message::Text(text))) => assert!(text.contains("connection_ack"), "{text}"),
        other => panic!("{other:?}"),
    }
    ws
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_without_stalling_other_subscribers() {
    let w = world_with("OPENAI", "gpt-4o-mini", |c| {
        c.max_output_bytes = 64 * 1024 * 1024;
        c.ws_send_timeout_secs = 1;
    })
    .await;
    // 200 events of 64 KiB: far more than the socket buffers of both ends hold.
    let chunk = "x".repeat(64 * 1024);
    w.fake.set_stream(StreamScript {
        tokens: vec![chunk; 200],
        ..StreamScript::default()
    });
    let id = w.start("big").await;
    assert_eq!(w.finished(&id).await["status"], "SUCCEEDED");

    let mut stuck = tiny_buffer_socket(&w.app, &w.user.access).await;
    stuck
        .send(Message::Text(
            json!({"id": "1", "type": "subscribe", "payload": {
                "query": "subscription($id: ID!) { executionEvents(executionId: $id) { sequence delta } }",
                "variables": {"id": id}}})
            .to_string()
            .into(),
        ))
        .await
        .unwrap();
    // Meanwhile a reading subscriber gets the whole run.
    let events = subscribe(&w.app, &w.user.access, &id, None).await.unwrap();
    assert_eq!(events.len(), 203, "STARTED, 200 deltas, USAGE, COMPLETED");

    tokio::time::sleep(Duration::from_secs(4)).await;
    // Now drain what the stuck client's buffers held: the server gave up before the end.
    let mut nexts = 0;
    let mut completed = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stuck.next()).await {
            Err(_) => panic!("the slow reader's socket was not closed"),
            Ok(Some(Ok(Message::Text(text)))) => {
                if text.contains("\"next\"") {
                    nexts += 1;
                } else if text.contains("\"complete\"") {
                    completed = true;
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                if let Some(frame) = frame {
                    assert_eq!(u16::from(frame.code), 4413, "{frame:?}");
                }
                break;
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => break,
        }
    }
    assert!(!completed, "a client that did not read got the whole run");
    assert!(nexts < 203, "{nexts}");
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
async fn operation_messages_spelled_with_escapes_are_counted_by_the_rate_limit() {
    let app = TestApp::spawn_with(|c| {
        c.rate_limit_per_second = 1;
        c.rate_limit_burst = 2;
    })
    .await;
    let user = app.register("escapes@example.com").await;
    let mut ws = signed_in(&app, &user.access).await;
    for id in 1..=6 {
        // `subscrib\u0065` is "subscribe" to any JSON parser, and the protocol library runs it.
        ws.send_text(format!(
            r#"{{"id":"{id}","type":"subscrib\u0065","payload":{{"query":"{{ __typename }}"}}}}"#
        ))
        .await;
    }
    let mut answered = 0;
    loop {
        match ws.next(5).await {
            WsEvent::Json(m) if m["type"] == "next" => answered += 1,
            WsEvent::Json(_) => {}
            WsEvent::Closed(code, reason) => {
                assert_eq!(code, 4429, "{reason}");
                break;
            }
            WsEvent::Ended => panic!("ended without 4429"),
        }
    }
    assert!(answered <= 3, "{answered} operations ran past a burst of 2");
}
