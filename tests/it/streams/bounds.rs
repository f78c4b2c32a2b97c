//! WebSocket bounds: subscriptions per connection and user, connections per address and in total, idle anonymous sockets, dead peers, slow readers, escaped operation types.

use super::*;

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
async fn operation_messages_spelled_with_escapes_are_counted_by_the_rate_limit() {
    // `subscrib\u0065` is "subscribe" to any JSON parser, and the protocol library runs it.
    six_operations_are_rate_limited("escapes@example.com", |id| {
        format!(
            r#"{{"id":"{id}","type":"subscrib\u0065","payload":{{"query":"{{ __typename }}"}}}}"#
        )
    })
    .await;
}

#[tokio::test]
async fn operation_messages_sent_as_arrays_are_counted_by_the_rate_limit() {
    // The protocol library's message type is a serde tagged enum, which also reads a JSON
    // array (the tag, then the fields in order) and runs it as a subscribe.
    six_operations_are_rate_limited("arrays@example.com", |id| {
        format!(r#"["subscribe","{id}",{{"query":"{{ __typename }}"}}]"#)
    })
    .await;
}

/// Sends six operations spelled by `spell` under a rate limit of one per second with a burst
/// of two: the connection is closed with 4429 before more than three have run.
async fn six_operations_are_rate_limited(email: &str, spell: fn(u32) -> String) {
    let app = TestApp::spawn_with(|c| {
        c.rate_limit_per_second = 1;
        c.rate_limit_burst = 2;
    })
    .await;
    let user = app.register(email).await;
    let mut ws = signed_in(&app, &user.access).await;
    for id in 1..=6 {
        ws.send_text(spell(id)).await;
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
