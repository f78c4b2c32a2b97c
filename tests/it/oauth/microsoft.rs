//! Microsoft: its ID token is verified (signature, issuer, audience, expiry, nonce) and its email addresses are never trusted.

use super::*;

#[tokio::test]
async fn microsoft_never_creates_an_account_and_its_email_is_never_trusted() {
    let (app, fake) = app_with_fake().await;
    let victim = app.register("victim@example.com").await;
    let users_before = app.count("SELECT count(*) FROM users").await;
    // A Microsoft account can carry anyone's address, unverified (the "nOAuth" attack), even
    // claiming it is verified.
    for email in ["victim@example.com", "newcomer@example.com"] {
        let mut who = Identity::new("oid-attacker", email);
        who.email_verified = true;
        let body = flow(&app, &fake, None, "MICROSOFT", "LOGIN", who).await;
        assert_eq!(code(&body), "CONFLICT", "{body}");
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains("link Microsoft"), "{message}");
        assert!(body["data"]["completeOAuth"].is_null(), "{body}");
    }
    assert_eq!(app.count("SELECT count(*) FROM users").await, users_before);
    assert_eq!(app.count("SELECT count(*) FROM oauth_accounts").await, 0);
    // The victim's sessions are only their own.
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM sessions WHERE user_id = '{}'",
            victim.user_id
        ))
        .await,
        1
    );
    // Linked from the account itself, Microsoft signs in, and stores no email for the account.
    let (session, body) = microsoft_login(
        &app,
        &fake,
        "owner@example.com",
        Identity::new("oid-owner", "someone-else@example.com"),
    )
    .await;
    assert_ne!(session.user_id, victim.user_id);
    assert!(
        body["data"]["completeOAuth"]["account"]["email"].is_null(),
        "{body}"
    );
}

#[tokio::test]
async fn a_microsoft_id_token_that_fails_any_check_signs_nobody_in() {
    let (app, fake) = app_with_fake().await;
    let who = Identity::new("oid-checked", "checked@example.com");
    let (owner, _) = microsoft_login(&app, &fake, "checked@example.com", who.clone()).await;
    // The flow sends a nonce bound to its state; the token must carry it back.
    let (url, state) = started(&app, None, "MICROSOFT", "LOGIN").await;
    let query: std::collections::HashMap<String, String> = url::Url::parse(&url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let nonce = query.get("nonce").cloned().unwrap_or_default();
    assert_eq!(nonce.len(), 43, "{url}");
    assert_eq!(query.get("state"), Some(&state));
    assert_ne!(
        nonce, state,
        "the nonce is derived from the state, not a copy of it"
    );
    let (google, _) = started(&app, None, "GOOGLE", "LOGIN").await;
    assert!(!google.contains("nonce="), "{google}");

    let sessions = app.count("SELECT count(*) FROM sessions").await;
    for fault in [
        IdTokenFault::Missing,
        IdTokenFault::ForgedSignature,
        IdTokenFault::WrongAudience,
        IdTokenFault::WrongNonce,
        IdTokenFault::WrongIssuer,
        IdTokenFault::Expired,
    ] {
        fake.fault_id_tokens(Some(fault));
        let body = flow(&app, &fake, None, "MICROSOFT", "LOGIN", who.clone()).await;
        assert_eq!(code(&body), "PROVIDER_ERROR", "{fault:?}: {body}");
        assert!(body["data"]["completeOAuth"].is_null(), "{fault:?}: {body}");
        assert_no_token(&fake, &body.to_string());
    }
    assert_eq!(app.count("SELECT count(*) FROM sessions").await, sessions);
    // The same person with a sound token signs in again.
    fake.fault_id_tokens(None);
    let (again, _) = oauth_login(&app, &fake, "MICROSOFT", who).await;
    assert_eq!(again.user_id, owner.user_id);
}
