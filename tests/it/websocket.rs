//! GraphQL over WebSocket on /graphql: protocols, Origin check, `connection_init` auth and
//! deadline, message cap, and closing when the token expires or the session is revoked.

use crate::common;

use common::{ALLOWED_ORIGIN, TestApp, WsEvent};
use serde_json::json;

fn bearer(token: &str) -> serde_json::Value {
    json!({ "Authorization": format!("Bearer {token}") })
}

fn assert_ack(event: WsEvent) {
    match event {
        WsEvent::Json(message) => assert_eq!(message["type"], "connection_ack", "{message}"),
        other => panic!("expected connection_ack, got {other:?}"),
    }
}

fn assert_closed(event: WsEvent, code: u16) -> String {
    match event {
        WsEvent::Closed(got, reason) => {
            assert_eq!(got, code, "closed with {got} ({reason}), expected {code}");
            reason
        }
        other => panic!("expected close {code}, got {other:?}"),
    }
}

#[tokio::test]
async fn graphql_transport_ws_acknowledges_a_valid_token() {
    let app = TestApp::spawn().await;
    let session = app.register("ws@example.com").await;
    let mut ws = app
        .ws("graphql-transport-ws", Some(ALLOWED_ORIGIN))
        .await
        .expect("connect");
    assert_ack(ws.init(bearer(&session.access)).await);
    // The protocol's ping is answered.
    ws.send(json!({"type": "ping"})).await;
    match ws.next(5).await {
        WsEvent::Json(message) => assert_eq!(message["type"], "pong"),
        other => panic!("expected pong, got {other:?}"),
    }
}

#[tokio::test]
async fn the_legacy_graphql_ws_protocol_is_spoken_too() {
    let app = TestApp::spawn().await;
    let session = app.register("legacy@example.com").await;
    let mut ws = app.ws("graphql-ws", None).await.expect("connect");
    assert_ack(ws.init(json!({ "authorization": session.access })).await);
}

#[tokio::test]
async fn an_unknown_subprotocol_is_refused() {
    let app = TestApp::spawn().await;
    assert!(app.ws("mqtt", None).await.is_err());
}

#[tokio::test]
async fn a_bad_origin_is_refused_before_the_upgrade() {
    let app = TestApp::spawn().await;
    let err = app
        .ws("graphql-transport-ws", Some("https://evil.example"))
        .await
        .err()
        .expect("refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => assert_eq!(response.status(), 403),
        other => panic!("expected HTTP 403, got {other}"),
    }
    // Non-browser clients send no Origin and are let through.
    assert!(app.ws("graphql-transport-ws", None).await.is_ok());
}

#[tokio::test]
async fn no_connection_init_closes_with_4408() {
    let app = TestApp::spawn_with(|c| c.ws_init_timeout_secs = 1).await;
    let mut ws = app.ws("graphql-transport-ws", None).await.expect("connect");
    let reason = assert_closed(ws.next(5).await, 4408);
    assert!(reason.contains("timeout"), "{reason}");
}

#[tokio::test]
async fn the_init_deadline_is_ten_seconds_by_default() {
    let app = TestApp::spawn().await;
    assert_eq!(app.state.config.ws_init_timeout_secs, 10);
}

#[tokio::test]
async fn refused_credentials_close_with_4403() {
    let app = TestApp::spawn().await;
    let session = app.register("refused@example.com").await;
    let mut ws = app.ws("graphql-transport-ws", None).await.expect("connect");
    assert_closed(ws.init(bearer("not-a-token")).await, 4403);
    // A token of a revoked session is refused as well.
    app.sql("UPDATE sessions SET revoked_at = now()").await;
    let mut ws = app.ws("graphql-transport-ws", None).await.expect("connect");
    assert_closed(ws.init(bearer(&session.access)).await, 4403);
}

#[tokio::test]
async fn the_socket_closes_when_its_token_expires() {
    let app = TestApp::spawn_with(|c| c.access_token_ttl_secs = 2).await;
    let session = app.register("expiring@example.com").await;
    let mut ws = app.ws("graphql-transport-ws", None).await.expect("connect");
    assert_ack(ws.init(bearer(&session.access)).await);
    let reason = assert_closed(ws.next(5).await, 4401);
    assert!(reason.contains("expired"), "{reason}");
}

#[tokio::test]
async fn the_socket_closes_when_its_session_is_revoked() {
    let app = TestApp::spawn().await;
    let session = app.register("revoked@example.com").await;
    let other = app.login("revoked@example.com", common::PASSWORD).await;
    let mut ws = app.ws("graphql-transport-ws", None).await.expect("connect");
    assert_ack(ws.init(bearer(&session.access)).await);
    let mut bystander = app.ws("graphql-transport-ws", None).await.expect("connect");
    assert_ack(bystander.init(bearer(&other.access)).await);

    let body = app
        .gql(
            "mutation($t: String!) { logout(refreshToken: $t) }",
            json!({"t": session.refresh}),
        )
        .await;
    assert_eq!(body["data"]["logout"], true);
    assert_closed(ws.next(5).await, 4403);
    // The user's other session keeps its socket.
    bystander.send(json!({"type": "ping"})).await;
    assert!(matches!(bystander.next(5).await, WsEvent::Json(_)));
}

#[tokio::test]
async fn suspending_a_user_closes_their_sockets() {
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin@example.com", "ADMIN").await;
    let user = app.register("suspend-ws@example.com").await;
    let mut ws = app.ws("graphql-transport-ws", None).await.expect("connect");
    assert_ack(ws.init(bearer(&user.access)).await);
    let body = app
        .gql_as(
            Some(&admin.access),
            "mutation($id: ID!) { suspendUser(userId: $id, reason: \"abuse\") { status } }",
            json!({"id": user.user_id}),
        )
        .await;
    assert_eq!(body["data"]["suspendUser"]["status"], "SUSPENDED", "{body}");
    assert_closed(ws.next(5).await, 4403);
}

#[tokio::test]
async fn a_role_change_on_one_server_closes_the_users_sockets_on_another() {
    let app = TestApp::spawn().await;
    let other_server = app.sibling().await;
    let owner = app.user_with_role("owner@example.com", "OWNER").await;
    let admin = app.user_with_role("demoted@example.com", "ADMIN").await;
    let mut ws = other_server
        .ws("graphql-transport-ws", None)
        .await
        .expect("connect");
    assert_ack(ws.init(bearer(&admin.access)).await);
    let body = app
        .gql_as(
            Some(&owner.access),
            "mutation($id: ID!) { setUserRole(userId: $id, role: USER) { role } }",
            json!({"id": admin.user_id}),
        )
        .await;
    assert_eq!(body["data"]["setUserRole"]["role"], "USER", "{body}");
    // The socket on the other server held the ADMIN role from its connection_init.
    assert_closed(ws.next(5).await, 4403);
}

#[tokio::test]
async fn a_socket_that_missed_revocations_checks_its_session_at_once() {
    let app = TestApp::spawn().await;
    let user = app.register("missed@example.com").await;
    let mut ws = app.ws("graphql-transport-ws", None).await.expect("connect");
    assert_ack(ws.init(bearer(&user.access)).await);
    // The session ends without an announcement reaching this server (the database's own is
    // switched off) …
    app.sql("ALTER TABLE sessions DISABLE TRIGGER sessions_announce_end")
        .await;
    app.sql(&format!(
        "UPDATE sessions SET revoked_at = now() WHERE user_id = '{}'",
        user.user_id
    ))
    .await;
    // … and the socket falls behind the revocation feed (others' revocations, more than it
    // buffers, sent while it cannot run: the test runtime has one thread).
    for _ in 0..300 {
        app.state
            .revoke(agentry::state::Revocation::Session(uuid::Uuid::now_v7()));
    }
    assert_closed(ws.next(5).await, 4403);
}

#[tokio::test]
async fn sockets_check_their_sessions_when_the_servers_listen_connection_comes_back() {
    let direct = TestApp::spawn().await;
    let proxy = common::db_proxy::DbProxy::start(&direct.database_url).await;
    let through = proxy.url_for(&direct.database_url);
    let app = direct.sibling_with(|c| c.database_url = through).await;
    let user = app.register("missed-notify@example.com").await;
    let mut ws = app.ws("graphql-transport-ws", None).await.expect("connect");
    assert_ack(ws.init(bearer(&user.access)).await);
    // While this server cannot hear announcements, another one revokes the session.
    proxy.down();
    direct
        .sql(&format!(
            "UPDATE sessions SET revoked_at = now() WHERE user_id = '{}'",
            user.user_id
        ))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    proxy.up();
    // The listener reconnects (backoff up to a few seconds) and every socket re-checks.
    assert_closed(ws.next(15).await, 4403);
}

#[tokio::test]
async fn subscribing_before_the_ack_closes_with_4401() {
    let app = TestApp::spawn().await;
    let mut ws = app.ws("graphql-transport-ws", None).await.expect("connect");
    ws.send(json!({"id": "1", "type": "subscribe", "payload": {"query": "subscription { x }"}}))
        .await;
    assert_closed(ws.next(5).await, 4401);
}

#[tokio::test]
async fn an_invalid_message_closes_with_4400() {
    let app = TestApp::spawn().await;
    let mut ws = app.ws("graphql-transport-ws", None).await.expect("connect");
    ws.send_text("this is not json".into()).await;
    assert_closed(ws.next(5).await, 4400);
}

#[tokio::test]
async fn messages_over_the_cap_end_the_connection() {
    let app = TestApp::spawn_with(|c| c.ws_max_message_bytes = 1024).await;
    let mut ws = app.ws("graphql-transport-ws", None).await.expect("connect");
    ws.send_text(
        json!({"type": "connection_init", "payload": {"pad": "x".repeat(4096)}}).to_string(),
    )
    .await;
    match ws.next(5).await {
        WsEvent::Ended => {}
        WsEvent::Closed(code, _) => assert_ne!(code, 1000),
        WsEvent::Json(message) => panic!("an oversize message was processed: {message}"),
    }
}

#[tokio::test]
async fn subscriptions_spend_the_rate_limit_and_too_many_close_with_4429() {
    let app = TestApp::spawn_with(|c| {
        c.rate_limit_per_second = 1;
        c.rate_limit_burst = 2;
    })
    .await;
    let session = app.register("busy-ws@example.com").await;
    let mut ws = app.ws("graphql-transport-ws", None).await.expect("connect");
    assert_ack(ws.init(bearer(&session.access)).await);
    for id in ["1", "2", "3"] {
        ws.send(json!({"id": id, "type": "subscribe", "payload": {"query": "subscription { executionUpdates { id } }"}}))
            .await;
    }
    let reason = assert_closed(ws.next(5).await, 4429);
    assert!(reason.contains("Too many requests"), "{reason}");
}

#[tokio::test]
async fn a_subscription_that_breaks_a_limit_or_does_not_parse_gets_the_coded_error() {
    let app = TestApp::spawn().await;
    let session = app.register("limits-ws@example.com").await;
    let mut ws = app
        .ws("graphql-transport-ws", Some(ALLOWED_ORIGIN))
        .await
        .expect("connect");
    assert_ack(ws.init(bearer(&session.access)).await);
    let aliased: String = (0..16)
        .map(|i| format!("a{i}: executionEvents(executionId: \"00000000-0000-0000-0000-000000000000\") {{ sequence }} "))
        .collect();
    for (id, query, code) in [
        (
            "aliases",
            format!("subscription {{ {aliased} }}"),
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "unknown",
            "subscription { noSuchField }".to_owned(),
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "syntax",
            "subscription { executionEvents(".to_owned(),
            "GRAPHQL_PARSE_FAILED",
        ),
    ] {
        ws.send(json!({"id": id, "type": "subscribe", "payload": {"query": query}}))
            .await;
        // async-graphql answers a request error as one `next` with no data, then `complete`.
        match ws.next(5).await {
            WsEvent::Json(message) => {
                assert_eq!(message["type"], "next", "{id}: {message}");
                assert_eq!(message["id"], id, "{message}");
                assert!(message["payload"]["data"].is_null(), "{id}: {message}");
                assert_eq!(
                    message["payload"]["errors"][0]["extensions"]["code"], code,
                    "{id}: {message}"
                );
            }
            other => panic!("{id}: expected an error message, got {other:?}"),
        }
        match ws.next(5).await {
            WsEvent::Json(message) => assert_eq!(message["type"], "complete", "{message}"),
            other => panic!("{id}: expected complete, got {other:?}"),
        }
    }
}
