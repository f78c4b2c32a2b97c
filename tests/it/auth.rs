//! Accounts and sessions through the real HTTP API: register, login, refresh, logout,
//! changePassword, updateProfile, me, and the token attacks of the security rules (ARCHITECTURE.md).

mod session_cache;
mod tokens;

use crate::common;

use std::time::Instant;

use base64::Engine;
use common::{PASSWORD, TestApp, code, field};
use serde_json::{Value, json};

const ME: &str = "{ me { id email displayName role status hasPassword lastLoginAt } }";
const REFRESH: &str = "mutation($t: String!) { refreshSession(refreshToken: $t) { accessToken refreshToken user { id } } }";

#[tokio::test]
async fn register_returns_tokens_that_authenticate_me() {
    let app = TestApp::spawn().await;
    let body = app
        .gql(
            "mutation { register(input: {email: \"  Ada@Example.COM \", password: \"violet-harbor-canoe-92\", displayName: \" Ada \"}) {
                accessToken accessTokenExpiresAt refreshToken refreshTokenExpiresAt user { email displayName role status } } }",
            json!({}),
        )
        .await;
    let payload = &body["data"]["register"];
    assert_eq!(payload["user"]["email"], "ada@example.com", "{body}");
    assert_eq!(payload["user"]["displayName"], "Ada");
    assert_eq!(payload["user"]["role"], "USER");
    let token = payload["accessToken"].as_str().unwrap();
    let me = app.gql_as(Some(token), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["email"], "ada@example.com", "{me}");
    assert_eq!(me["data"]["me"]["hasPassword"], true);
    assert!(me["data"]["me"]["lastLoginAt"].is_string());
    // The access token lives 15 minutes, the session 30 days.
    let access =
        chrono::DateTime::parse_from_rfc3339(payload["accessTokenExpiresAt"].as_str().unwrap())
            .unwrap();
    let refresh =
        chrono::DateTime::parse_from_rfc3339(payload["refreshTokenExpiresAt"].as_str().unwrap())
            .unwrap();
    let now = chrono::Utc::now();
    assert!((access.signed_duration_since(now).num_seconds() - 900).abs() < 10);
    assert!((refresh.signed_duration_since(now).num_days() - 30).abs() <= 1);
}

#[tokio::test]
async fn me_is_null_when_anonymous() {
    let app = TestApp::spawn().await;
    let body = app.gql(ME, json!({})).await;
    assert_eq!(body["data"]["me"], Value::Null, "{body}");
    assert!(body.get("errors").is_none());
}

#[tokio::test]
async fn passwords_are_stored_only_as_bcrypt_hashes() {
    let app = TestApp::spawn().await;
    let session = app.register("hash@example.com").await;
    let row = app
        .db()
        .await
        .query_one(
            "SELECT password_hash FROM users WHERE id = $1::text::uuid",
            &[&session.user_id],
        )
        .await
        .unwrap();
    let hash: String = row.get(0);
    assert!(hash.starts_with("$2"), "not a bcrypt hash: {hash}");
    assert!(!hash.contains(PASSWORD));
}

#[tokio::test]
async fn duplicate_email_is_a_conflict_whatever_its_case() {
    let app = TestApp::spawn().await;
    app.register("dup@example.com").await;
    let body = app
        .gql(
            "mutation { register(input: {email: \"DUP@example.com\", password: \"another-fine-passphrase-7\", displayName: \"X\"}) { accessToken } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&body), "CONFLICT", "{body}");
    assert_eq!(app.count("SELECT count(*) FROM users").await, 1);
}

#[tokio::test]
async fn bad_registration_input_names_the_field_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let cases = [
        (
            json!({"email": "", "password": PASSWORD, "displayName": "A"}),
            "input.email",
        ),
        (
            json!({"email": "not-an-email", "password": PASSWORD, "displayName": "A"}),
            "input.email",
        ),
        (
            json!({"email": format!("{}@example.com", "a".repeat(250)), "password": PASSWORD, "displayName": "A"}),
            "input.email",
        ),
        (
            json!({"email": "a@example.com", "password": PASSWORD, "displayName": "  "}),
            "input.displayName",
        ),
        (
            json!({"email": "a@example.com", "password": PASSWORD, "displayName": "x".repeat(101)}),
            "input.displayName",
        ),
        (
            json!({"email": "a@example.com", "password": "short", "displayName": "A"}),
            "input.password",
        ),
        (
            json!({"email": "a@example.com", "password": "x".repeat(129), "displayName": "A"}),
            "input.password",
        ),
        (
            json!({"email": "a@example.com", "password": "password1234", "displayName": "A"}),
            "input.password",
        ),
        (
            json!({"email": "a@example.com", "password": "qwertyuiopasdfgh", "displayName": "A"}),
            "input.password",
        ),
    ];
    for (input, expected_field) in cases {
        let body = app
            .gql(
                "mutation($input: RegisterInput!) { register(input: $input) { accessToken } }",
                json!({ "input": input }),
            )
            .await;
        assert_eq!(code(&body), "BAD_USER_INPUT", "{input}: {body}");
        assert_eq!(field(&body), expected_field, "{input}: {body}");
    }
    assert_eq!(app.count("SELECT count(*) FROM users").await, 0);
}

#[tokio::test]
async fn a_password_built_from_the_email_is_refused_with_zxcvbn_feedback() {
    let app = TestApp::spawn().await;
    let body = app
        .gql(
            "mutation { register(input: {email: \"margaret.hamilton@example.com\", password: \"margaret.hamilton1\", displayName: \"Margaret\"}) { accessToken } }",
            json!({}),
        )
        .await;
    assert_eq!(field(&body), "input.password", "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("too easy to guess"), "{message}");
}

#[tokio::test]
async fn passwords_longer_than_72_bytes_are_not_truncated() {
    let app = TestApp::spawn().await;
    let long = format!("{}-tail-one", "pale-orchid-river-stone-".repeat(4));
    let body = app
        .gql(
            "mutation($p: String!) { register(input: {email: \"long@example.com\", password: $p, displayName: \"L\"}) { accessToken } }",
            json!({ "p": long }),
        )
        .await;
    assert!(
        body["data"]["register"]["accessToken"].is_string(),
        "{body}"
    );
    // Same first 72+ bytes, different ending: bcrypt alone would accept it.
    let other = format!("{}-tail-two", "pale-orchid-river-stone-".repeat(4));
    let body = app
        .gql(
            "mutation($p: String!) { login(email: \"long@example.com\", password: $p) { accessToken } }",
            json!({ "p": other }),
        )
        .await;
    assert_eq!(code(&body), "UNAUTHENTICATED", "{body}");
    app.login("long@example.com", &long).await;
}

#[tokio::test]
async fn login_failure_is_the_same_for_unknown_email_and_wrong_password() {
    let app = TestApp::spawn_with(|c| c.bcrypt_cost = 8).await;
    app.register("known@example.com").await;
    let attempt = |email: &'static str| {
        let app = &app;
        async move {
            let started = Instant::now();
            let body = app
                .gql(
                    "mutation($e: String!) { login(email: $e, password: \"wrong-password-123\") { accessToken } }",
                    json!({ "e": email }),
                )
                .await;
            (body, started.elapsed())
        }
    };
    let (wrong_password, t_known) = attempt("known@example.com").await;
    let (unknown_email, t_unknown) = attempt("nobody@example.com").await;
    assert_eq!(code(&wrong_password), "UNAUTHENTICATED");
    assert_eq!(
        wrong_password["errors"][0]["message"],
        unknown_email["errors"][0]["message"]
    );
    assert_eq!(code(&unknown_email), "UNAUTHENTICATED");
    // Both spend a bcrypt verification at cost 8 (~15 ms or more): an unknown email is not
    // answered instantly.
    let (fast, slow) = if t_known < t_unknown {
        (t_known, t_unknown)
    } else {
        (t_unknown, t_known)
    };
    assert!(
        fast.as_secs_f64() > slow.as_secs_f64() * 0.3,
        "known {t_known:?} vs unknown {t_unknown:?}"
    );
}

#[tokio::test]
async fn login_works_with_any_case_of_the_email_and_records_the_time() {
    let app = TestApp::spawn().await;
    app.register("case@example.com").await;
    let session = app.login("CASE@Example.com", PASSWORD).await;
    let me = app.gql_as(Some(&session.access), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["email"], "case@example.com");
}

#[tokio::test]
async fn refresh_rotates_the_token_and_a_replay_revokes_the_family_with_an_audit_row() {
    let app = TestApp::spawn().await;
    let session = app.register("rotate@example.com").await;
    let body = app.gql(REFRESH, json!({ "t": session.refresh })).await;
    let second = common::Session::from_payload(&body["data"]["refreshSession"]).expect("refreshed");
    assert_ne!(second.refresh, session.refresh);
    // The new access token works.
    let me = app.gql_as(Some(&second.access), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["email"], "rotate@example.com");

    // Replaying the first refresh token: refused, and the whole family ends.
    let replay = app.gql(REFRESH, json!({ "t": session.refresh })).await;
    assert_eq!(code(&replay), "UNAUTHENTICATED", "{replay}");
    let me = app.gql_as(Some(&second.access), ME, json!({})).await;
    assert_eq!(code(&me), "UNAUTHENTICATED", "{me}");
    let again = app.gql(REFRESH, json!({ "t": second.refresh })).await;
    assert_eq!(code(&again), "UNAUTHENTICATED", "{again}");
    assert_eq!(
        app.count("SELECT count(*) FROM audit_log WHERE action = 'session.refresh_token_reuse'")
            .await,
        1
    );
    // Another sign-in is unaffected.
    let fresh = app.login("rotate@example.com", PASSWORD).await;
    let me = app.gql_as(Some(&fresh.access), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["email"], "rotate@example.com");
}

#[tokio::test]
async fn refresh_tokens_are_stored_only_as_hashes() {
    let app = TestApp::spawn().await;
    let session = app.register("stored@example.com").await;
    let rows = app
        .db()
        .await
        .query(
            "SELECT encode(refresh_token_hash, 'escape') FROM sessions",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let stored: String = rows[0].get(0);
    assert!(!stored.contains(&session.refresh));
}

#[tokio::test]
async fn a_session_past_its_absolute_lifetime_cannot_refresh() {
    let app = TestApp::spawn().await;
    let session = app.register("old@example.com").await;
    app.sql("UPDATE sessions SET expires_at = now() - interval '1 second'")
        .await;
    let body = app.gql(REFRESH, json!({ "t": session.refresh })).await;
    assert_eq!(code(&body), "UNAUTHENTICATED", "{body}");
    let me = app.gql_as(Some(&session.access), ME, json!({})).await;
    assert_eq!(code(&me), "UNAUTHENTICATED", "{me}");
}

#[tokio::test]
async fn rotation_never_extends_the_absolute_lifetime() {
    let app = TestApp::spawn().await;
    let session = app.register("abs@example.com").await;
    let first = app
        .gql("mutation($t: String!) { refreshSession(refreshToken: $t) { refreshToken refreshTokenExpiresAt } }", json!({"t": session.refresh}))
        .await;
    let second = app
        .gql(
            "mutation($t: String!) { refreshSession(refreshToken: $t) { refreshTokenExpiresAt } }",
            json!({"t": first["data"]["refreshSession"]["refreshToken"]}),
        )
        .await;
    assert_eq!(
        first["data"]["refreshSession"]["refreshTokenExpiresAt"],
        second["data"]["refreshSession"]["refreshTokenExpiresAt"]
    );
}

#[tokio::test]
async fn logout_ends_one_session_or_all_of_them() {
    let app = TestApp::spawn().await;
    let laptop = app.register("out@example.com").await;
    let phone = app.login("out@example.com", PASSWORD).await;
    let tablet = app.login("out@example.com", PASSWORD).await;

    let body = app
        .gql_as(
            Some(&laptop.access),
            "mutation($t: String!) { logout(refreshToken: $t) }",
            json!({"t": laptop.refresh}),
        )
        .await;
    assert_eq!(body["data"]["logout"], true, "{body}");
    assert_eq!(
        code(&app.gql_as(Some(&laptop.access), ME, json!({})).await),
        "UNAUTHENTICATED"
    );
    let me = app.gql_as(Some(&phone.access), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["email"], "out@example.com");
    // Logging out twice is a harmless false.
    let again = app
        .gql(
            "mutation($t: String!) { logout(refreshToken: $t) }",
            json!({"t": laptop.refresh}),
        )
        .await;
    assert_eq!(again["data"]["logout"], false);

    let body = app
        .gql(
            "mutation($t: String!) { logout(refreshToken: $t, allSessions: true) }",
            json!({"t": phone.refresh}),
        )
        .await;
    assert_eq!(body["data"]["logout"], true);
    assert_eq!(
        code(&app.gql_as(Some(&phone.access), ME, json!({})).await),
        "UNAUTHENTICATED"
    );
    assert_eq!(
        code(&app.gql_as(Some(&tablet.access), ME, json!({})).await),
        "UNAUTHENTICATED"
    );
    let refresh = app.gql(REFRESH, json!({"t": tablet.refresh})).await;
    assert_eq!(code(&refresh), "UNAUTHENTICATED");
}

#[tokio::test]
async fn another_users_refresh_token_cannot_log_them_out() {
    let app = TestApp::spawn().await;
    let alice = app.register("alice@example.com").await;
    let mallory = app.register("mallory@example.com").await;
    let body = app
        .gql_as(
            Some(&mallory.access),
            "mutation($t: String!) { logout(refreshToken: $t) }",
            json!({"t": alice.refresh}),
        )
        .await;
    assert_eq!(body["data"]["logout"], false);
    let me = app.gql_as(Some(&alice.access), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["email"], "alice@example.com");
}

#[tokio::test]
async fn change_password_revokes_every_other_session_and_audits() {
    let app = TestApp::spawn().await;
    let first = app.register("pw@example.com").await;
    let other = app.login("pw@example.com", PASSWORD).await;
    let body = app
        .gql_as(
            Some(&first.access),
            "mutation { changePassword(currentPassword: \"violet-harbor-canoe-92\", newPassword: \"amber-lantern-quartz-55\") { accessToken refreshToken user { id } } }",
            json!({}),
        )
        .await;
    let fresh = common::Session::from_payload(&body["data"]["changePassword"])
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(
        code(&app.gql_as(Some(&other.access), ME, json!({})).await),
        "UNAUTHENTICATED"
    );
    assert_eq!(
        code(&app.gql(REFRESH, json!({"t": other.refresh})).await),
        "UNAUTHENTICATED"
    );
    let me = app.gql_as(Some(&fresh.access), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["email"], "pw@example.com");
    // The old password no longer works; the new one does.
    let old = app
        .gql("mutation { login(email: \"pw@example.com\", password: \"violet-harbor-canoe-92\") { accessToken } }", json!({}))
        .await;
    assert_eq!(code(&old), "UNAUTHENTICATED");
    app.login("pw@example.com", "amber-lantern-quartz-55").await;
    assert_eq!(
        app.count("SELECT count(*) FROM audit_log WHERE action = 'user.password_change'")
            .await,
        1
    );
}

#[tokio::test]
async fn change_password_checks_the_current_one_and_the_policy() {
    let app = TestApp::spawn().await;
    let session = app.register("pw2@example.com").await;
    let change = |current: &str, new: &str| {
        let (app, token) = (&app, session.access.clone());
        let vars = json!({"c": current, "n": new});
        async move {
            app.gql_as(
                Some(&token),
                "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) { accessToken } }",
                vars,
            )
            .await
        }
    };
    let wrong = change("not-my-password-at-all", "amber-lantern-quartz-55").await;
    assert_eq!(
        (code(&wrong), field(&wrong)),
        ("BAD_USER_INPUT", "currentPassword"),
        "{wrong}"
    );
    let weak = change(PASSWORD, "password12345").await;
    assert_eq!(
        (code(&weak), field(&weak)),
        ("BAD_USER_INPUT", "newPassword"),
        "{weak}"
    );
    let same = change(PASSWORD, PASSWORD).await;
    assert_eq!(
        (code(&same), field(&same)),
        ("BAD_USER_INPUT", "newPassword"),
        "{same}"
    );
    // Nothing changed: the session still works and the password is the same.
    let me = app.gql_as(Some(&session.access), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["email"], "pw2@example.com");
    app.login("pw2@example.com", PASSWORD).await;
    let anonymous = app
        .gql("mutation { changePassword(currentPassword: \"a\", newPassword: \"b\") { accessToken } }", json!({}))
        .await;
    assert_eq!(code(&anonymous), "UNAUTHENTICATED");
}

#[tokio::test]
async fn update_profile_validates_and_keeps_omitted_fields() {
    let app = TestApp::spawn().await;
    let session = app.register("profile@example.com").await;
    let update = |vars: Value| {
        app.gql_as(
            Some(&session.access),
            "mutation($n: String) { updateProfile(displayName: $n) { displayName } }",
            vars,
        )
    };
    let body = update(json!({"n": "  Grace Hopper "})).await;
    assert_eq!(
        body["data"]["updateProfile"]["displayName"], "Grace Hopper",
        "{body}"
    );
    let body = update(json!({})).await;
    assert_eq!(body["data"]["updateProfile"]["displayName"], "Grace Hopper");
    for bad in ["", "x".repeat(101).as_str(), "bad\u{7}name"] {
        let body = update(json!({"n": bad})).await;
        assert_eq!(
            (code(&body), field(&body)),
            ("BAD_USER_INPUT", "displayName"),
            "{body}"
        );
    }
    let me = app.gql_as(Some(&session.access), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["displayName"], "Grace Hopper");
}

const SECRET: &[u8] = b"test-secret-test-secret-test-secret-0123";

#[tokio::test]
async fn a_suspended_users_live_token_stops_working_at_once() {
    let app = TestApp::spawn().await;
    let session = app.register("live@example.com").await;
    app.sql("UPDATE users SET status = 'SUSPENDED'").await;
    let body = app.gql_as(Some(&session.access), ME, json!({})).await;
    assert_eq!(code(&body), "UNAUTHENTICATED", "{body}");
}

#[tokio::test]
async fn a_first_password_on_a_provider_only_account_needs_a_recent_sign_in() {
    let app = TestApp::spawn().await;
    let user = app.register("provider-only@example.com").await;
    // The shape of an account made by OAuth sign-in: no password.
    app.sql(&format!(
        "UPDATE users SET password_hash = NULL WHERE id = '{}'",
        user.user_id
    ))
    .await;
    let set_first = |token: String| {
        let app = &app;
        async move {
            app.gql_as(
                Some(&token),
                "mutation { changePassword(currentPassword: \"\", newPassword: \"amber-lantern-quartz-55\") { accessToken } }",
                json!({}),
            )
            .await
        }
    };
    // An access token of a sign-in an hour old (say, stolen) cannot set one …
    app.sql(&format!(
        "UPDATE sessions SET created_at = now() - interval '1 hour' WHERE user_id = '{}'",
        user.user_id
    ))
    .await;
    let refused = set_first(user.access.clone()).await;
    assert_eq!(code(&refused), "FORBIDDEN", "{refused}");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM users WHERE id = '{}' AND password_hash IS NULL",
            user.user_id
        ))
        .await,
        1
    );
    // … a fresh sign-in can.
    app.sql(&format!(
        "UPDATE sessions SET created_at = now() WHERE user_id = '{}'",
        user.user_id
    ))
    .await;
    let set = set_first(user.access.clone()).await;
    assert!(
        set["data"]["changePassword"]["accessToken"].is_string(),
        "{set}"
    );
}
