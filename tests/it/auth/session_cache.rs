//! The session cache (`AGENTRY_SESSION_CACHE_MS`): a token used moments ago skips the session
//! query, and every way a session or user changes still applies at once on this server and,
//! through NOTIFY, within moments on every other one. The cache's lifetime is set to a minute
//! here, so only eviction — never expiry — can make these tests pass.

use super::*;
use std::time::Duration;

const LIFETIME_MS: u64 = 60_000;

async fn cached_app() -> TestApp {
    TestApp::spawn_with(|c| c.session_cache_ms = LIFETIME_MS).await
}

/// Uses `token` until the server keeps its session (the cache starts once the server's LISTEN
/// connection is up), then checks that another request costs no SQL statement.
async fn warm(app: &TestApp, token: &str) {
    for _ in 0..250 {
        let me = app.gql_as(Some(token), ME, json!({})).await;
        assert!(me["data"]["me"]["id"].is_string(), "{me}");
        if !app.state.sessions.is_empty() {
            // Background work (recovery sweeps, the webhook queue) shares the pool's
            // counter, so ten requests must cost well under ten statements, not zero.
            let before = app.state.query_counter.get();
            for _ in 0..10 {
                let me = app.gql_as(Some(token), ME, json!({})).await;
                assert!(me["data"]["me"]["id"].is_string(), "{me}");
            }
            let ran = app.state.query_counter.get() - before;
            assert!(
                ran < 5,
                "cached sessions still ran {ran} statements in 10 requests"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the session was never cached");
}

/// Ends `session` with `logout`.
async fn log_out(app: &TestApp, session: &common::Session) {
    let body = app
        .gql_as(
            Some(&session.access),
            "mutation($t: String!) { logout(refreshToken: $t) }",
            json!({"t": session.refresh}),
        )
        .await;
    assert_eq!(body["data"]["logout"], true, "{body}");
}

/// Polls `me` with `token` until it is refused; fails after `within`.
async fn refused_within(app: &TestApp, token: &str, within: Duration) {
    let start = std::time::Instant::now();
    loop {
        let body = app.gql_as(Some(token), ME, json!({})).await;
        if code(&body) == "UNAUTHENTICATED" {
            return;
        }
        assert!(
            start.elapsed() < within,
            "still accepted after {within:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_cached_session_sees_logout_password_role_profile_and_suspension_at_once() {
    let app = cached_app().await;
    let admin = app.user_with_role("boss@example.com", "OWNER").await;
    // Only the server's own eviction may make these pass: the triggers' announcements, which
    // would reach this server's cache moments later, are off.
    app.sql("ALTER TABLE users DISABLE TRIGGER users_announce_change")
        .await;
    app.sql("ALTER TABLE sessions DISABLE TRIGGER sessions_announce_end")
        .await;

    // Logout of one session.
    let laptop = app.register("cache@example.com").await;
    let phone = app.login("cache@example.com", PASSWORD).await;
    warm(&app, &laptop.access).await;
    warm(&app, &phone.access).await;
    log_out(&app, &laptop).await;
    let me = app.gql_as(Some(&laptop.access), ME, json!({})).await;
    assert_eq!(code(&me), "UNAUTHENTICATED", "logout was late: {me}");
    let me = app.gql_as(Some(&phone.access), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["email"], "cache@example.com", "{me}");

    // A profile change shows at once in the cached session.
    let body = app
        .gql_as(
            Some(&phone.access),
            "mutation { updateProfile(displayName: \"Ada Lovelace\") { displayName } }",
            json!({}),
        )
        .await;
    assert_eq!(
        body["data"]["updateProfile"]["displayName"], "Ada Lovelace",
        "{body}"
    );
    warm(&app, &phone.access).await;
    let me = app.gql_as(Some(&phone.access), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["displayName"], "Ada Lovelace", "{me}");

    // A password change ends the other sessions.
    let tablet = app.login("cache@example.com", PASSWORD).await;
    warm(&app, &tablet.access).await;
    let body = app
        .gql_as(
            Some(&phone.access),
            "mutation { changePassword(currentPassword: \"violet-harbor-canoe-92\", newPassword: \"amber-lantern-quartz-55\") { accessToken } }",
            json!({}),
        )
        .await;
    let fresh = body["data"]["changePassword"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned();
    let me = app.gql_as(Some(&tablet.access), ME, json!({})).await;
    assert_eq!(
        code(&me),
        "UNAUTHENTICATED",
        "password change was late: {me}"
    );

    // A role change shows at once.
    warm(&app, &fresh).await;
    let user_id = app.gql_as(Some(&fresh), ME, json!({})).await["data"]["me"]["id"].clone();
    let body = app
        .gql_as(
            Some(&admin.access),
            "mutation($id: ID!) { setUserRole(userId: $id, role: ADMIN) { role } }",
            json!({"id": user_id}),
        )
        .await;
    assert_eq!(body["data"]["setUserRole"]["role"], "ADMIN", "{body}");
    // The session lives on with the new role, seen at once.
    let me = app.gql_as(Some(&fresh), ME, json!({})).await;
    assert_eq!(
        me["data"]["me"]["role"], "ADMIN",
        "role change was late: {me}"
    );

    // A suspension ends a new sign-in's.
    let fresh = app
        .login("cache@example.com", "amber-lantern-quartz-55")
        .await
        .access;
    warm(&app, &fresh).await;
    let body = app
        .gql_as(
            Some(&admin.access),
            "mutation($id: ID!) { suspendUser(userId: $id, reason: \"spam\") { status } }",
            json!({"id": user_id}),
        )
        .await;
    assert_eq!(body["data"]["suspendUser"]["status"], "SUSPENDED", "{body}");
    let me = app.gql_as(Some(&fresh), ME, json!({})).await;
    assert_eq!(code(&me), "UNAUTHENTICATED", "suspension was late: {me}");
}

#[tokio::test]
async fn another_servers_and_an_operators_changes_reach_the_cache() {
    let app = cached_app().await;
    let other = app.sibling().await;
    let first = app.register("two@example.com").await;
    let second = app.login("two@example.com", PASSWORD).await;
    warm(&other, &first.access).await;
    warm(&other, &second.access).await;

    // A logout on one server: the other hears it through NOTIFY.
    log_out(&app, &first).await;
    refused_within(&other, &first.access, Duration::from_secs(3)).await;

    // An operator's SQL, which no server announces: the database's triggers do.
    let me = other.gql_as(Some(&second.access), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["email"], "two@example.com", "{me}");
    app.sql("UPDATE users SET display_name = 'Renamed' WHERE email = 'two@example.com'")
        .await;
    let start = std::time::Instant::now();
    loop {
        let me = other.gql_as(Some(&second.access), ME, json!({})).await;
        if me["data"]["me"]["displayName"] == "Renamed" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "rename not seen: {me}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    warm(&other, &second.access).await;
    app.sql("UPDATE users SET status = 'SUSPENDED' WHERE email = 'two@example.com'")
        .await;
    refused_within(&other, &second.access, Duration::from_secs(3)).await;
}
