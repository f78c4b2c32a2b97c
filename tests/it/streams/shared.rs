//! The shared `executionEvents` lane: the transport serves the usual subscription shape itself
//! (each event serialized once for all subscribers); its messages must be exactly async-graphql's.

use agentry::executions::model::{EventKind, EventRow};
use serde_json::{Value, json};

use super::quiet_run;
use crate::common::{self, ALLOWED_ORIGIN, WsEvent};
use crate::executions::{World, world_with};

/// Every field, in an unusual order (the answer must keep the selection's order), with the
/// `__typename` Apollo Client adds. The lane serves it; sent with request `extensions` (which
/// async-graphql ignores here), the very same query goes to async-graphql instead.
const LANE: &str = "subscription($id: ID!, $after: Int) { executionEvents(executionId: $id, after: $after) { data sequence at kind executionId delta __typename } }";

/// Stores event `sequence` of `run` and publishes it to the hub, as a runner does.
async fn append(
    w: &World,
    run: uuid::Uuid,
    sequence: i32,
    kind: EventKind,
    delta: Option<&str>,
    data: Option<Value>,
) {
    // Stamped as runners stamp events: to the microsecond the table keeps.
    let at = agentry::executions::model::event_time();
    let delta_sql = delta.map_or("NULL".into(), |d| format!("'{}'", d.replace('\'', "''")));
    let data_sql = data.as_ref().map_or("NULL".into(), |d| {
        format!("'{}'::jsonb", d.to_string().replace('\'', "''"))
    });
    w.app
        .sql(&format!(
            "INSERT INTO execution_events (execution_id, sequence, kind, delta, data, at) \
             VALUES ('{run}', {sequence}, '{}', {delta_sql}, {data_sql}, '{}'); \
             UPDATE executions SET last_sequence = {sequence} WHERE id = '{run}'",
            kind.as_str(),
            at.to_rfc3339()
        ))
        .await;
    w.app.state.hub.publish(EventRow {
        execution_id: run,
        sequence,
        kind,
        delta: delta.map(str::to_owned),
        data,
        at,
    });
}

/// A world whose connections may hold one subscription at a time (slot accounting shows).
async fn one_slot_world() -> World {
    world_with("OPENAI", "gpt-4o-mini", |c| {
        c.execution_heartbeat_secs = 60;
        c.ws_max_subscriptions = 1;
    })
    .await
}

/// Stores and publishes `run`'s STARTED event (sequence 1).
async fn started(w: &World, run: uuid::Uuid) {
    append(
        w,
        run,
        1,
        EventKind::Started,
        None,
        Some(json!({"model": "m"})),
    )
    .await;
}

async fn signed_in(w: &World, protocol: &str) -> common::Ws {
    let mut ws = w
        .app
        .ws(protocol, Some(ALLOWED_ORIGIN))
        .await
        .expect("connect");
    match ws
        .init(json!({"Authorization": format!("Bearer {}", w.user.access)}))
        .await
    {
        WsEvent::Json(m) if m["type"] == "connection_ack" => ws,
        other => panic!("no ack: {other:?}"),
    }
}

/// Subscribes to `run` twice: as `lane` through the shared lane, as `general` through
/// async-graphql.
async fn subscribe_both(ws: &mut common::Ws, variables: Value) {
    ws.send(json!({"id": "lane", "type": "subscribe", "payload": {"query": LANE, "variables": variables}}))
        .await;
    ws.send(json!({"id": "general", "type": "subscribe", "payload": {"query": LANE, "variables": variables, "extensions": {"x": 1}}}))
        .await;
}

/// Subscribes to `run` through the shared lane as operation `id`.
async fn subscribe_lane(ws: &mut common::Ws, id: &str, run: uuid::Uuid) {
    ws.send(json!({"id": id, "type": "subscribe", "payload": {"query": LANE, "variables": {"id": run}}}))
        .await;
}

/// Subscribes as [`subscribe_lane`] does and checks that the operation is served: its first
/// message is `id`'s data (not a refusal).
async fn subscribe_served(ws: &mut common::Ws, id: &str, run: uuid::Uuid) {
    subscribe_lane(ws, id, run).await;
    let first = ws.next_text(10).await;
    assert!(
        first.contains(&format!(r#""id":"{id}","payload":{{"data""#)),
        "{first}"
    );
}

/// The messages of operations `a` and `b` until both completed, each with its id blanked.
async fn both_until_complete(ws: &mut common::Ws, a: &str, b: &str) -> (Vec<String>, Vec<String>) {
    let (mut of_a, mut of_b) = (Vec::new(), Vec::new());
    let mut open = 2;
    while open > 0 {
        let text = ws.next_text(10).await;
        let message: Value = serde_json::from_str(&text).unwrap();
        let id = message["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{text}"))
            .to_owned();
        let blank = text.replacen(&format!(r#""id":"{id}""#), r#""id":"_""#, 1);
        if message["type"] == "complete" {
            open -= 1;
        }
        match id.as_str() {
            id if id == a => of_a.push(blank),
            id if id == b => of_b.push(blank),
            other => panic!("a message of {other}: {text}"),
        }
    }
    (of_a, of_b)
}

#[tokio::test]
async fn the_shared_lane_answers_byte_for_byte_as_async_graphql_does() {
    let w = world_with("OPENAI", "gpt-4o-mini", |c| c.execution_heartbeat_secs = 60).await;
    for (protocol, next) in [("graphql-transport-ws", "next"), ("graphql-ws", "data")] {
        let run = quiet_run(&w, "shared").await;
        // Stored before anyone subscribes (a replay), with JSON of every kind and awkward text.
        append(
            &w,
            run,
            1,
            EventKind::Started,
            None,
            Some(json!({"model": "gpt-4o-mini", "provider": "OPENAI"})),
        )
        .await;
        append(
            &w,
            run,
            2,
            EventKind::OutputDelta,
            Some("Hé \"quoted\" \\ line\nbreak\t✓ 😀"),
            None,
        )
        .await;
        append(&w, run, 3, EventKind::ToolCall, None, Some(json!({"name": "calculator", "arguments": {"expression": "2+2", "n": [1, 2.5, -3e-7, null, true]}}))).await;

        let mut ws = signed_in(&w, protocol).await;
        subscribe_both(&mut ws, json!({"id": run, "after": null})).await;
        // Then live ones, through the hub, after both replayed the stored three.
        let mut replayed = 0;
        while replayed < 6 {
            let text = ws.next_text(10).await;
            assert!(text.starts_with(&format!(r#"{{"type":"{next}""#)), "{text}");
            replayed += 1;
        }
        append(&w, run, 4, EventKind::OutputDelta, Some(" more"), None).await;
        append(
            &w,
            run,
            5,
            EventKind::Usage,
            None,
            Some(json!({"inputTokens": 12, "outputTokens": 3, "costUsd": 0.000_123_4})),
        )
        .await;
        append(&w, run, 6, EventKind::Completed, None, None).await;
        let (lane, general) = both_until_complete(&mut ws, "lane", "general").await;
        // Both got the three live events and `complete`, byte for byte the same.
        assert_eq!(lane.len(), 4, "{lane:?}");
        assert_eq!(lane, general, "{protocol}");
        assert_eq!(lane[3], r#"{"type":"complete","id":"_"}"#);
        assert!(lane[0].starts_with(&format!(r#"{{"type":"{next}","id":"_","payload":{{"data":{{"executionEvents":{{"data":null,"sequence":4,"at":""#)), "{}", lane[0]);
    }

    // Replays alone (a finished run), compared from the first message.
    let run = quiet_run(&w, "shared").await;
    started(&w, run).await;
    append(
        &w,
        run,
        2,
        EventKind::Failed,
        None,
        Some(json!({"error": "provider said <no>"})),
    )
    .await;
    let mut ws = signed_in(&w, "graphql-transport-ws").await;
    subscribe_both(&mut ws, json!({"id": run})).await;
    let (lane, general) = both_until_complete(&mut ws, "lane", "general").await;
    assert_eq!(lane.len(), 3, "{lane:?}");
    assert_eq!(lane, general);

    // Another user's run: the lane's error is async-graphql's, then `complete`.
    let other = w.app.register("other@example.com").await;
    let mut theirs = w
        .app
        .ws("graphql-transport-ws", Some(ALLOWED_ORIGIN))
        .await
        .expect("connect");
    match theirs
        .init(json!({"Authorization": format!("Bearer {}", other.access)}))
        .await
    {
        WsEvent::Json(m) if m["type"] == "connection_ack" => {}
        unexpected => panic!("no ack: {unexpected:?}"),
    }
    subscribe_both(&mut theirs, json!({"id": run})).await;
    let (lane, general) = both_until_complete(&mut theirs, "lane", "general").await;
    assert_eq!(lane, general);
    assert!(lane[0].contains(r#""code":"NOT_FOUND""#), "{}", lane[0]);
    assert!(
        lane[0].contains(r#""path":["executionEvents"]"#),
        "{}",
        lane[0]
    );
}

#[tokio::test]
async fn a_shared_subscription_the_client_completes_stops_at_once_and_frees_its_slot() {
    let w = one_slot_world().await;
    let run = quiet_run(&w, "shared").await;
    let mut ws = signed_in(&w, "graphql-transport-ws").await;
    for round in 0..3 {
        let id = format!("watch-{round}");
        subscribe_lane(&mut ws, &id, run).await;
        append(&w, run, round + 1, EventKind::OutputDelta, Some("x"), None).await;
        // It follows the run (the replay or the feed brings every event so far, in order).
        let mut seen = 0;
        while seen <= round {
            let message: Value = serde_json::from_str(&ws.next_text(10).await).unwrap();
            assert_eq!(message["id"], id.as_str(), "{message}");
            assert_eq!(
                message["payload"]["data"]["executionEvents"]["sequence"],
                seen + 1
            );
            seen += 1;
        }
        ws.send(json!({"id": id, "type": "complete"})).await;
        assert_eq!(
            ws.next_text(10).await,
            format!(r#"{{"type":"complete","id":"{id}"}}"#)
        );
        // The one slot is free again: the next round's subscribe is not refused.
    }
    // Nothing more arrives for the stopped ones, and the socket still answers.
    append(&w, run, 4, EventKind::OutputDelta, Some("late"), None).await;
    ws.send(json!({"id": "q", "type": "subscribe", "payload": {"query": "{ __typename }"}}))
        .await;
    let answer: Value = serde_json::from_str(&ws.next_text(10).await).unwrap();
    assert_eq!(
        (answer["type"].as_str(), answer["id"].as_str()),
        (Some("next"), Some("q")),
        "{answer}"
    );
    assert_eq!(ws.next_text(10).await, r#"{"type":"complete","id":"q"}"#);
}

#[tokio::test]
async fn an_id_reused_after_a_shared_subscription_ended_belongs_to_its_new_operation() {
    let w = one_slot_world().await;
    let run = quiet_run(&w, "ended").await;
    append(&w, run, 1, EventKind::Completed, None, None).await;
    let mut ws = signed_in(&w, "graphql-transport-ws").await;
    // Served by the lane; ends by itself after the terminal event, freeing the one slot.
    subscribe_lane(&mut ws, "x", run).await;
    assert!(ws.next_text(10).await.contains(r#""kind":"COMPLETED""#));
    assert_eq!(ws.next_text(10).await, r#"{"type":"complete","id":"x"}"#);
    // The same id for a subscription async-graphql serves: admitted (the slot is free), and the
    // client's `complete` reaches async-graphql, which stops it and confirms.
    ws.send(json!({"id": "x", "type": "subscribe", "payload": {"query": "subscription { executionUpdates { id } }"}}))
        .await;
    ws.send(json!({"id": "x", "type": "complete"})).await;
    assert_eq!(ws.next_text(10).await, r#"{"type":"complete","id":"x"}"#);
    // The slot is free again.
    subscribe_served(&mut ws, "y", run).await;
}

#[tokio::test]
async fn a_subscribe_without_an_id_closes_the_connection_whatever_serves_it() {
    let w = world_with("OPENAI", "gpt-4o-mini", |_| {}).await;
    let run = quiet_run(&w, "no id").await;
    let mut ws = signed_in(&w, "graphql-transport-ws").await;
    ws.send(json!({"type": "subscribe", "payload": {"query": LANE, "variables": {"id": run}}}))
        .await;
    match ws.next(10).await {
        WsEvent::Closed(code, _) => assert_eq!(code, 4400),
        other => panic!("expected 4400, got {other:?}"),
    }
}

#[tokio::test]
async fn a_complete_without_an_id_closes_the_connection_and_stops_nothing() {
    let w = world_with("OPENAI", "gpt-4o-mini", |c| c.execution_heartbeat_secs = 60).await;
    let run = quiet_run(&w, "empty id").await;
    started(&w, run).await;
    let mut ws = signed_in(&w, "graphql-transport-ws").await;
    // An operation a raw client named "" (the protocol library accepts it); served by the lane.
    subscribe_served(&mut ws, "", run).await;
    // A `complete` that names no operation is malformed, not a stop of operation "".
    ws.send(json!({"type": "complete"})).await;
    match ws.next(10).await {
        WsEvent::Closed(code, _) => assert_eq!(code, 4400),
        other => panic!("expected 4400, got {other:?}"),
    }
}

#[tokio::test]
async fn stopping_and_reusing_an_id_at_once_keeps_every_answer_in_order() {
    let w = one_slot_world().await;
    let run = quiet_run(&w, "reuse").await;
    started(&w, run).await;
    let mut ws = signed_in(&w, "graphql-transport-ws").await;
    // async-graphql's X, stopped, and X again for the lane, sent back to back: the stop's
    // `complete` must not free the new X (it would then get nothing at all).
    ws.send(json!({"id": "x", "type": "subscribe", "payload": {"query": "subscription { executionUpdates { id } }"}}))
        .await;
    ws.send(json!({"id": "x", "type": "complete"})).await;
    subscribe_lane(&mut ws, "x", run).await;
    assert_eq!(ws.next_text(10).await, r#"{"type":"complete","id":"x"}"#);
    let started = ws.next_text(10).await;
    assert!(
        started.contains(r#""id":"x""#) && started.contains(r#""kind":"STARTED""#),
        "{started}"
    );
    // The lane's X stopped, then X again for async-graphql: the confirmation comes first.
    ws.send(json!({"id": "x", "type": "complete"})).await;
    ws.send(json!({"id": "x", "type": "subscribe", "payload": {"query": "{ __typename }"}}))
        .await;
    assert_eq!(ws.next_text(10).await, r#"{"type":"complete","id":"x"}"#);
    let answer = ws.next_text(10).await;
    assert!(answer.starts_with(r#"{"type":"next","id":"x""#), "{answer}");
    assert_eq!(ws.next_text(10).await, r#"{"type":"complete","id":"x"}"#);
    // The one slot is free: a last lane subscription is admitted and served.
    subscribe_served(&mut ws, "z", run).await;
}

#[tokio::test]
async fn closing_a_connection_frees_the_user_slots_its_shared_subscriptions_held() {
    // One subscription per user across all connections: the lane's holds it.
    let w = world_with("OPENAI", "gpt-4o-mini", |c| {
        c.execution_heartbeat_secs = 60;
        c.ws_max_subscriptions_per_user = 1;
    })
    .await;
    let run = quiet_run(&w, "held").await;
    started(&w, run).await;
    let mut first = signed_in(&w, "graphql-transport-ws").await;
    subscribe_served(&mut first, "a", run).await;
    // While it is open, another connection of the user is refused.
    let mut second = signed_in(&w, "graphql-transport-ws").await;
    subscribe_lane(&mut second, "b", run).await;
    let refusal: Value = serde_json::from_str(&second.next_text(10).await).unwrap();
    assert_eq!(refusal["type"], "error", "{refusal}");
    assert!(
        refusal["payload"][0]["message"]
            .as_str()
            .unwrap()
            .contains("AGENTRY_WS_MAX_SUBSCRIPTIONS_PER_USER"),
        "{refusal}"
    );
    // The client goes away without completing anything.
    drop(first);
    // The server notices the close and gives the slot back (a moment later, hence the retries).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    for attempt in 0.. {
        let id = format!("c{attempt}");
        subscribe_lane(&mut second, &id, run).await;
        let answer: Value = serde_json::from_str(&second.next_text(10).await).unwrap();
        if answer["type"] == "next" {
            assert_eq!(answer["id"], id.as_str(), "{answer}");
            assert_eq!(answer["payload"]["data"]["executionEvents"]["sequence"], 1);
            break;
        }
        assert_eq!(answer["type"], "error", "{answer}");
        assert!(
            std::time::Instant::now() < deadline,
            "the closed connection's slot was not freed within 15 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
