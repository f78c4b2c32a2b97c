//! Every misuse of an OAuth flow is refused: another browser's flow, a used, expired, foreign or forged `state`, a wrong PKCE verifier or redirect URI, a redirect off the allowlist.

use super::*;

#[tokio::test]
async fn a_login_started_in_another_browser_cannot_be_completed_in_this_one() {
    let (app, fake) = app_with_fake().await;
    // The attacker starts a LOGIN flow, consents with their own account, and tricks the
    // victim's browser into completing it (code and state in a crafted callback link).
    let (url, state) = started(&app, None, "GOOGLE", "LOGIN").await;
    let (auth_code, _) = fake
        .consent(&url, Identity::new("attacker-sub", "mallory@example.com"))
        .await;
    // The victim's browser holds no binding for this flow, or its own from another one.
    let (_, victims_state) = started(&app, None, "GOOGLE", "LOGIN").await;
    let victims_binding = BINDINGS.lock().unwrap()[&victims_state].clone();
    for binding in [None, Some(victims_binding.as_str())] {
        let body = complete_bound(&app, None, "GOOGLE", &auth_code, &state, binding).await;
        assert_eq!(
            (code(&body), field(&body)),
            ("BAD_USER_INPUT", "browserBinding"),
            "{body}"
        );
    }
    assert_eq!(app.count("SELECT count(*) FROM users").await, 0);
    // The browser that started it completes it.
    let body = complete(&app, None, "GOOGLE", &auth_code, &state).await;
    assert!(
        body["data"]["completeOAuth"]["auth"]["accessToken"].is_string(),
        "{body}"
    );
}

#[tokio::test]
async fn every_misused_state_is_refused_naming_the_state_field() {
    let (app, fake) = app_with_fake().await;
    let who = || Identity::new("state-sub", "state@example.com");

    // Missing and unknown.
    let (url, _) = started(&app, None, "GOOGLE", "LOGIN").await;
    let (code_a, _) = fake.consent(&url, who()).await;
    for bad in ["", "not-a-state-we-issued"] {
        let body = complete(&app, None, "GOOGLE", &code_a, bad).await;
        assert_eq!(code(&body), "BAD_USER_INPUT", "{bad}: {body}");
        assert_eq!(field(&body), "state");
    }

    // Other provider: a Google state presented as GitHub's.
    let (url, state) = started(&app, None, "GOOGLE", "LOGIN").await;
    let (code_b, _) = fake.consent(&url, who()).await;
    let body = complete(&app, None, "GITHUB", &code_b, &state).await;
    assert_eq!(code(&body), "BAD_USER_INPUT", "{body}");
    assert_eq!(field(&body), "state");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("issued for Google"),
        "{body}"
    );

    // Expired.
    let (url, state) = started(&app, None, "GOOGLE", "LOGIN").await;
    let (code_c, _) = fake.consent(&url, who()).await;
    app.sql(
        "UPDATE oauth_states SET expires_at = now() - interval '1 second' WHERE used_at IS NULL",
    )
    .await;
    let body = complete(&app, None, "GOOGLE", &code_c, &state).await;
    assert_eq!(code(&body), "BAD_USER_INPUT", "{body}");
    assert_eq!(field(&body), "state");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );

    // Replayed: the first use works, the second is refused.
    let (url, state) = started(&app, None, "GOOGLE", "LOGIN").await;
    let (code_d, _) = fake.consent(&url, who()).await;
    let ok = complete(&app, None, "GOOGLE", &code_d, &state).await;
    assert!(
        ok["data"]["completeOAuth"]["auth"]["accessToken"].is_string(),
        "{ok}"
    );
    let body = complete(&app, None, "GOOGLE", &code_d, &state).await;
    assert_eq!(code(&body), "BAD_USER_INPUT", "{body}");
    assert_eq!(field(&body), "state");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("already been used")
    );

    // A LINK state belongs to the user who started it.
    let alice = app.register("alice@example.com").await;
    let mallory = app.register("mallory@example.com").await;
    let (url, state) = started(&app, Some(&alice.access), "GOOGLE", "LINK").await;
    let (code_e, _) = fake
        .consent(&url, Identity::new("mallory-sub", "m@example.com"))
        .await;
    let body = complete(&app, Some(&mallory.access), "GOOGLE", &code_e, &state).await;
    assert_eq!(code(&body), "BAD_USER_INPUT", "{body}");
    assert_eq!(field(&body), "state");
    let body = complete(&app, None, "GOOGLE", &code_e, &state).await;
    assert_eq!(code(&body), "UNAUTHENTICATED", "{body}");
    assert_eq!(app.count("SELECT count(*) FROM oauth_accounts").await, 1);
}

#[tokio::test]
async fn a_code_exchanged_with_the_wrong_verifier_or_redirect_is_refused_by_the_provider() {
    let (app, fake) = app_with_fake().await;
    let who = Identity::new("pkce-sub", "pkce@example.com");
    // Code injection: the code of flow B arrives with the state (and so the verifier) of flow A.
    let (_, state_a) = started(&app, None, "GOOGLE", "LOGIN").await;
    let (url_b, _) = started(&app, None, "GOOGLE", "LOGIN").await;
    let (code_b, _) = fake.consent(&url_b, who.clone()).await;
    let body = complete(&app, None, "GOOGLE", &code_b, &state_a).await;
    assert_eq!(code(&body), "PROVIDER_ERROR", "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("invalid_grant"), "{message}");
    assert!(!message.contains(CLIENT_SECRET) && !message.contains(&code_b));

    // A code issued for one callback, redeemed by a flow started for another.
    let body = start(&app, None, "GOOGLE", "LOGIN", OTHER_CALLBACK).await;
    let state_other = body["data"]["startOAuth"]["state"]
        .as_str()
        .unwrap()
        .to_owned();
    let (url_c, _) = started(&app, None, "GOOGLE", "LOGIN").await;
    let (code_c, _) = fake.consent(&url_c, who).await;
    let body = complete(&app, None, "GOOGLE", &code_c, &state_other).await;
    assert_eq!(code(&body), "PROVIDER_ERROR", "{body}");
    assert_eq!(app.count("SELECT count(*) FROM users").await, 0);
}

#[tokio::test]
async fn a_redirect_uri_off_the_allowlist_is_refused() {
    let (app, _fake) = app_with_fake().await;
    for uri in [
        "https://evil.example/callback",
        "http://app.example.test/oauth/callback/",
        "http://app.example.test/oauth/callback?next=/admin",
        "",
    ] {
        let body = start(&app, None, "GOOGLE", "LOGIN", uri).await;
        assert_eq!(code(&body), "BAD_USER_INPUT", "{uri}: {body}");
        assert_eq!(field(&body), "redirectUri");
    }
    assert_eq!(app.count("SELECT count(*) FROM oauth_states").await, 0);
}
