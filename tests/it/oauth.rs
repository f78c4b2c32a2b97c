//! OAuth sign-in and linked accounts through GraphQL, against a local fake provider that checks
//! PKCE and redirect URIs like a real one: sign-up, sign-in, linking, unlinking rules, refresh
//! and revocation, every misuse of `state`, wrong verifiers and redirect URIs, conflicts, and
//! what is stored.

use crate::common;
mod fake;

use common::{PASSWORD, Session, TestApp, code, field, id_at};
use fake::{CLIENT_ID, CLIENT_SECRET, FakeOAuth, IdTokenFault, Identity};
use serde_json::{Value, json};

const CALLBACK: &str = "http://app.example.test/oauth/callback";
const OTHER_CALLBACK: &str = "http://app.example.test/settings/oauth/callback";

const ACCOUNT: &str = "id provider email isConnected expiresAt canRefresh createdAt updatedAt";

/// A server with all three providers pointing at one fake.
async fn app_with_fake() -> (TestApp, FakeOAuth) {
    let fake = FakeOAuth::start().await;
    let base = fake.base_url();
    let app = TestApp::spawn_with(|c| {
        let o = &mut c.oauth;
        o.redirect_uris = vec![CALLBACK.to_owned(), OTHER_CALLBACK.to_owned()];
        o.google_client_id = Some(CLIENT_ID.to_owned());
        o.google_client_secret = Some(CLIENT_SECRET.to_owned().into());
        o.google_auth_url = format!("{base}/authorize");
        o.google_token_url = format!("{base}/token");
        o.google_userinfo_url = format!("{base}/userinfo");
        o.github_client_id = Some(CLIENT_ID.to_owned());
        o.github_client_secret = Some(CLIENT_SECRET.to_owned().into());
        o.github_auth_url = format!("{base}/authorize");
        o.github_token_url = format!("{base}/token");
        o.github_userinfo_url = format!("{base}/user");
        o.microsoft_client_id = Some(CLIENT_ID.to_owned());
        o.microsoft_client_secret = Some(CLIENT_SECRET.to_owned().into());
        o.microsoft_auth_url = format!("{base}/authorize");
        o.microsoft_token_url = format!("{base}/token");
        o.microsoft_jwks_url = format!("{base}/ms/keys");
        o.microsoft_issuer = fake::FAKE_ISSUER_TEMPLATE.to_owned();
    })
    .await;
    (app, fake)
}

/// The browser binding each started flow returned, by state: what a frontend keeps in
/// sessionStorage between `startOAuth` and `completeOAuth`.
static BINDINGS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, String>>> =
    std::sync::LazyLock::new(Default::default);

async fn start(
    app: &TestApp,
    token: Option<&str>,
    provider: &str,
    intent: &str,
    redirect: &str,
) -> Value {
    let body = app
        .gql_as(
            token,
            "mutation($p: OAuthProvider!, $i: OAuthIntent!, $r: String!) {
            startOAuth(provider: $p, intent: $i, redirectUri: $r) { authorizationUrl state expiresAt browserBinding } }",
            json!({ "p": provider, "i": intent, "r": redirect }),
        )
        .await;
    if let (Some(state), Some(binding)) = (
        body["data"]["startOAuth"]["state"].as_str(),
        body["data"]["startOAuth"]["browserBinding"].as_str(),
    ) {
        BINDINGS
            .lock()
            .unwrap()
            .insert(state.to_owned(), binding.to_owned());
    }
    body
}

/// `startOAuth`, returning `(authorizationUrl, state)`.
async fn started(
    app: &TestApp,
    token: Option<&str>,
    provider: &str,
    intent: &str,
) -> (String, String) {
    let body = start(app, token, provider, intent, CALLBACK).await;
    let s = &body["data"]["startOAuth"];
    let url = s["authorizationUrl"]
        .as_str()
        .unwrap_or_else(|| panic!("startOAuth failed: {body}"));
    (
        url.to_owned(),
        s["state"].as_str().expect("state").to_owned(),
    )
}

async fn complete(
    app: &TestApp,
    token: Option<&str>,
    provider: &str,
    code: &str,
    state: &str,
) -> Value {
    let binding = BINDINGS.lock().unwrap().get(state).cloned();
    complete_bound(app, token, provider, code, state, binding.as_deref()).await
}

/// `completeOAuth` with an explicit browser binding (or none).
async fn complete_bound(
    app: &TestApp,
    token: Option<&str>,
    provider: &str,
    code: &str,
    state: &str,
    binding: Option<&str>,
) -> Value {
    app.gql_as(
        token,
        &format!(
            "mutation($p: OAuthProvider!, $c: String!, $s: String!, $b: String) {{
                completeOAuth(provider: $p, code: $c, state: $s, browserBinding: $b) {{
                    intent created
                    auth {{ accessToken refreshToken user {{ id email displayName hasPassword }} }}
                    account {{ {ACCOUNT} }} }} }}"
        ),
        json!({ "p": provider, "c": code, "s": state, "b": binding }),
    )
    .await
}

/// The whole redirect flow as a frontend runs it: start, consent at the provider, complete.
async fn flow(
    app: &TestApp,
    fake: &FakeOAuth,
    token: Option<&str>,
    provider: &str,
    intent: &str,
    who: Identity,
) -> Value {
    let (url, state) = started(app, token, provider, intent).await;
    let (code, returned_state) = fake.consent(&url, who).await;
    assert_eq!(
        returned_state, state,
        "the provider hands the state back unchanged"
    );
    complete(app, token, provider, &code, &state).await
}

/// Signs in with OAuth (LOGIN) and returns the session.
async fn oauth_login(
    app: &TestApp,
    fake: &FakeOAuth,
    provider: &str,
    who: Identity,
) -> (Session, Value) {
    let body = flow(app, fake, None, provider, "LOGIN", who).await;
    let session = Session::from_payload(&body["data"]["completeOAuth"]["auth"])
        .unwrap_or_else(|| panic!("OAuth login failed: {body}"));
    (session, body)
}

/// A password account `email` with the Microsoft identity `who` linked to it (Microsoft never
/// creates accounts: its email addresses are unverified), then signed in with Microsoft.
async fn microsoft_login(
    app: &TestApp,
    fake: &FakeOAuth,
    email: &str,
    who: Identity,
) -> (Session, Value) {
    let owner = app.register(email).await;
    let linked = flow(
        app,
        fake,
        Some(&owner.access),
        "MICROSOFT",
        "LINK",
        who.clone(),
    )
    .await;
    assert_eq!(linked["data"]["completeOAuth"]["created"], true, "{linked}");
    let (session, body) = oauth_login(app, fake, "MICROSOFT", who).await;
    assert_eq!(session.user_id, owner.user_id, "{body}");
    (session, body)
}

async fn me(app: &TestApp, token: &str) -> Value {
    app.gql_as(
        Some(token),
        &format!("{{ me {{ id email hasPassword oauthAccounts {{ {ACCOUNT} }} }} }}"),
        json!({}),
    )
    .await
}

fn assert_no_token(fake: &FakeOAuth, text: &str) {
    for token in fake.issued_tokens() {
        assert!(
            !text.contains(&token),
            "a provider token reached a response"
        );
    }
    assert!(
        !text.contains(CLIENT_SECRET),
        "the client secret reached a response"
    );
}

#[tokio::test]
async fn oauth_providers_lists_only_the_configured_ones() {
    let app = TestApp::spawn().await;
    let body = app
        .gql(
            "{ oauthProviders { provider displayName scopes } }",
            json!({}),
        )
        .await;
    assert_eq!(body["data"]["oauthProviders"], json!([]), "{body}");
    let body = start(&app, None, "GOOGLE", "LOGIN", CALLBACK).await;
    assert_eq!(code(&body), "BAD_USER_INPUT", "{body}");
    assert_eq!(field(&body), "provider");

    let fake = FakeOAuth::start().await;
    let base = fake.base_url();
    let app = TestApp::spawn_with(|c| {
        c.oauth.redirect_uris = vec![CALLBACK.to_owned()];
        c.oauth.google_client_id = Some(CLIENT_ID.to_owned());
        c.oauth.google_client_secret = Some(CLIENT_SECRET.to_owned().into());
        c.oauth.github_client_id = Some(CLIENT_ID.to_owned());
        c.oauth.github_client_secret = Some(CLIENT_SECRET.to_owned().into());
        c.oauth.github_auth_url = format!("{base}/authorize");
    })
    .await;
    let body = app
        .gql(
            "{ oauthProviders { provider displayName scopes } }",
            json!({}),
        )
        .await;
    let providers: Vec<&str> = body["data"]["oauthProviders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["provider"].as_str().unwrap())
        .collect();
    assert_eq!(providers, ["GOOGLE", "GITHUB"], "{body}");
    assert_eq!(body["data"]["oauthProviders"][1]["displayName"], "GitHub");
    let body = start(&app, None, "MICROSOFT", "LOGIN", CALLBACK).await;
    assert_eq!(code(&body), "BAD_USER_INPUT", "{body}");
    assert_eq!(field(&body), "provider");
    // The default URLs are the providers' real ones.
    let (url, _) = started(&app, None, "GOOGLE", "LOGIN").await;
    assert!(
        url.starts_with("https://accounts.google.com/o/oauth2/v2/auth?"),
        "{url}"
    );
    let (url, _) = started(&app, None, "GITHUB", "LOGIN").await;
    assert!(url.starts_with(&format!("{base}/authorize?")), "{url}");
}

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
async fn a_new_google_user_signs_up_with_pkce_and_gets_a_normal_session() {
    let (app, fake) = app_with_fake().await;
    let (session, body) = oauth_login(
        &app,
        &fake,
        "GOOGLE",
        Identity::new("google-sub-1", "Ada@Example.com"),
    )
    .await;
    let done = &body["data"]["completeOAuth"];
    assert_eq!(done["intent"], "LOGIN");
    assert_eq!(done["created"], true, "{body}");
    assert_eq!(done["auth"]["user"]["email"], "ada@example.com");
    assert_eq!(done["auth"]["user"]["displayName"], "Ada Lovelace");
    assert_eq!(done["auth"]["user"]["hasPassword"], false);
    assert_eq!(done["account"]["provider"], "GOOGLE");
    assert_eq!(done["account"]["email"], "ada@example.com");
    assert_eq!(done["account"]["isConnected"], true);
    assert_eq!(done["account"]["canRefresh"], true);
    assert!(done["account"]["expiresAt"].is_string());
    assert_no_token(&fake, &body.to_string());

    // The authorization request carried PKCE S256, the scopes and the allowlisted callback.
    let asked = fake.last_authorize();
    assert_eq!(asked["code_challenge_method"], "S256");
    assert_eq!(asked["redirect_uri"], CALLBACK);
    assert_eq!(asked["scope"], "openid email profile");
    assert_eq!(asked["access_type"], "offline");

    // A normal session: the access token works and the refresh token rotates.
    let me = me(&app, &session.access).await;
    assert_eq!(me["data"]["me"]["id"], session.user_id.as_str(), "{me}");
    assert_eq!(
        me["data"]["me"]["oauthAccounts"].as_array().unwrap().len(),
        1
    );
    let refreshed = app
        .gql(
            "mutation($t: String!) { refreshSession(refreshToken: $t) { accessToken } }",
            json!({ "t": session.refresh }),
        )
        .await;
    assert!(
        refreshed["data"]["refreshSession"]["accessToken"].is_string(),
        "{refreshed}"
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM audit_log WHERE action = 'user.register_oauth' AND target_user_id = '{}'",
            session.user_id
        ))
        .await,
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM users WHERE password_hash IS NULL")
            .await,
        1
    );
}

#[tokio::test]
async fn a_returning_user_is_recognised_by_subject_not_by_email() {
    let (app, fake) = app_with_fake().await;
    let (first, _) = oauth_login(
        &app,
        &fake,
        "GOOGLE",
        Identity::new("sub-42", "ada@example.com"),
    )
    .await;
    // The email changed at Google; the subject did not.
    let (again, body) = oauth_login(
        &app,
        &fake,
        "GOOGLE",
        Identity::new("sub-42", "ada.new@example.com"),
    )
    .await;
    assert_eq!(again.user_id, first.user_id);
    assert_eq!(body["data"]["completeOAuth"]["created"], false, "{body}");
    assert_eq!(
        body["data"]["completeOAuth"]["account"]["email"],
        "ada.new@example.com"
    );
    assert_eq!(app.count("SELECT count(*) FROM users").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM oauth_accounts").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM sessions").await, 2);
}

#[tokio::test]
async fn github_and_microsoft_identify_people_by_their_stable_ids() {
    let (app, fake) = app_with_fake().await;
    let (gh, body) = oauth_login(
        &app,
        &fake,
        "GITHUB",
        Identity::new("583231", "octo@example.com"),
    )
    .await;
    // The verified primary address from /user/emails, not the other one.
    assert_eq!(
        body["data"]["completeOAuth"]["auth"]["user"]["email"], "octo@example.com",
        "{body}"
    );
    let mut who = Identity::new("00000000-0000-0000-66f3-3332eca7ea81", "ms@example.com");
    who.tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47".into();
    let (ms, _) = microsoft_login(&app, &fake, "ms@example.com", who).await;
    assert_ne!(gh.user_id, ms.user_id);
    let db = app.db().await;
    let rows = db
        .query(
            "SELECT provider, subject FROM oauth_accounts ORDER BY provider",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        [
            ("GITHUB".to_owned(), "583231".to_owned()),
            (
                "MICROSOFT".to_owned(),
                "72f988bf-86f1-41af-91ab-2d7cd011db47:00000000-0000-0000-66f3-3332eca7ea81"
                    .to_owned()
            ),
        ]
    );
    // The same person in another tenant is another account.
    let mut other_tenant = Identity::new("00000000-0000-0000-66f3-3332eca7ea81", "ms2@example.com");
    other_tenant.tenant = "aaaaaaaa-0000-0000-0000-000000000000".into();
    let (other, _) = microsoft_login(&app, &fake, "ms2@example.com", other_tenant).await;
    assert_ne!(other.user_id, ms.user_id);
}

#[tokio::test]
async fn an_email_owned_by_an_existing_account_is_never_linked_on_login() {
    let (app, fake) = app_with_fake().await;
    let owner = app.register("taken@example.com").await;
    let body = flow(
        &app,
        &fake,
        None,
        "GOOGLE",
        "LOGIN",
        Identity::new("intruder", "Taken@example.com"),
    )
    .await;
    assert_eq!(code(&body), "CONFLICT", "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("sign in with your password") && message.contains("link"),
        "{message}"
    );
    assert!(body["data"].is_null() || body["data"]["completeOAuth"].is_null());
    assert_eq!(app.count("SELECT count(*) FROM users").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM oauth_accounts").await, 0);

    // An unverified email creates nothing either.
    let mut unverified = Identity::new("unverified", "someone@example.com");
    unverified.email_verified = false;
    let body = flow(&app, &fake, None, "GOOGLE", "LOGIN", unverified).await;
    assert_eq!(code(&body), "CONFLICT", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("no verified email")
    );
    assert_eq!(app.count("SELECT count(*) FROM users").await, 1);

    // The owner links it explicitly, after which it signs them in.
    let body = flow(
        &app,
        &fake,
        Some(&owner.access),
        "GOOGLE",
        "LINK",
        Identity::new("intruder", "taken@example.com"),
    )
    .await;
    assert_eq!(body["data"]["completeOAuth"]["created"], true, "{body}");
    let (session, _) = oauth_login(
        &app,
        &fake,
        "GOOGLE",
        Identity::new("intruder", "taken@example.com"),
    )
    .await;
    assert_eq!(session.user_id, owner.user_id);
}

#[tokio::test]
async fn a_signed_in_user_links_an_account_and_then_signs_in_with_it() {
    let (app, fake) = app_with_fake().await;
    let user = app.register("linker@example.com").await;
    let anonymous = start(&app, None, "GITHUB", "LINK", CALLBACK).await;
    assert_eq!(code(&anonymous), "UNAUTHENTICATED", "{anonymous}");

    let body = flow(
        &app,
        &fake,
        Some(&user.access),
        "GITHUB",
        "LINK",
        Identity::new("777", "gh-linker@example.com"),
    )
    .await;
    let done = &body["data"]["completeOAuth"];
    assert_eq!(done["intent"], "LINK", "{body}");
    assert!(done["auth"].is_null(), "LINK keeps the current session");
    assert_eq!(done["created"], true);
    assert_eq!(done["account"]["email"], "gh-linker@example.com");
    let listed = me(&app, &user.access).await;
    assert_eq!(
        listed["data"]["me"]["oauthAccounts"][0]["provider"], "GITHUB",
        "{listed}"
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM audit_log WHERE action = 'oauth.link' AND actor_id = '{}'",
            user.user_id
        ))
        .await,
        1
    );
    let (session, body) = oauth_login(
        &app,
        &fake,
        "GITHUB",
        Identity::new("777", "gh-linker@example.com"),
    )
    .await;
    assert_eq!(session.user_id, user.user_id);
    assert_eq!(body["data"]["completeOAuth"]["created"], false);

    // Linking the same account again re-links it (new tokens), it does not duplicate it.
    let body = flow(
        &app,
        &fake,
        Some(&user.access),
        "GITHUB",
        "LINK",
        Identity::new("777", "gh-linker@example.com"),
    )
    .await;
    assert_eq!(body["data"]["completeOAuth"]["created"], false, "{body}");
    assert_eq!(app.count("SELECT count(*) FROM oauth_accounts").await, 1);
}

#[tokio::test]
async fn an_account_linked_to_another_user_is_a_conflict() {
    let (app, fake) = app_with_fake().await;
    let (_owner, _) = oauth_login(
        &app,
        &fake,
        "GOOGLE",
        Identity::new("shared-sub", "first@example.com"),
    )
    .await;
    let other = app.register("second@example.com").await;
    let body = flow(
        &app,
        &fake,
        Some(&other.access),
        "GOOGLE",
        "LINK",
        Identity::new("shared-sub", "first@example.com"),
    )
    .await;
    assert_eq!(code(&body), "CONFLICT", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("already linked to another")
    );
    let listed = me(&app, &other.access).await;
    assert_eq!(listed["data"]["me"]["oauthAccounts"], json!([]), "{listed}");
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

#[tokio::test]
async fn the_last_way_to_sign_in_cannot_be_unlinked_until_a_password_is_set() {
    let (app, fake) = app_with_fake().await;
    let (session, body) = oauth_login(
        &app,
        &fake,
        "GOOGLE",
        Identity::new("only-way", "only@example.com"),
    )
    .await;
    let google_id = id_at(&body, &["completeOAuth", "account"]);
    let disconnect = |token: String, id: String| {
        let app = &app;
        async move {
            app.gql_as(
                Some(&token),
                "mutation($id: ID!) { disconnectOAuthAccount(id: $id) }",
                json!({ "id": id }),
            )
            .await
        }
    };
    let body = disconnect(session.access.clone(), google_id.clone()).await;
    assert_eq!(code(&body), "CONFLICT", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("only way to sign in")
    );

    // A second linked account is another way to sign in.
    let linked = flow(
        &app,
        &fake,
        Some(&session.access),
        "GITHUB",
        "LINK",
        Identity::new("99", "only@example.com"),
    )
    .await;
    let github_id = id_at(&linked, &["completeOAuth", "account"]);
    let body = disconnect(session.access.clone(), github_id).await;
    assert_eq!(body["data"]["disconnectOAuthAccount"], true, "{body}");
    let body = disconnect(session.access.clone(), google_id.clone()).await;
    assert_eq!(code(&body), "CONFLICT", "{body}");

    // An OAuth user sets a first password with an empty currentPassword.
    let set = app
        .gql_as(
            Some(&session.access),
            "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) {
                accessToken user { hasPassword } } }",
            json!({ "c": "", "n": PASSWORD }),
        )
        .await;
    assert_eq!(
        set["data"]["changePassword"]["user"]["hasPassword"], true,
        "{set}"
    );
    let token = set["data"]["changePassword"]["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = disconnect(token.clone(), google_id).await;
    assert_eq!(body["data"]["disconnectOAuthAccount"], true, "{body}");
    assert_eq!(app.count("SELECT count(*) FROM oauth_accounts").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM audit_log WHERE action = 'oauth.unlink'")
            .await,
        2
    );
    // The password now signs in; an empty currentPassword no longer passes.
    app.login("only@example.com", PASSWORD).await;
    let again = app
        .gql_as(
            Some(&token),
            "mutation { changePassword(currentPassword: \"\", newPassword: \"another-violet-harbor-73\") { accessToken } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&again), "BAD_USER_INPUT", "{again}");
    assert_eq!(field(&again), "currentPassword");
}

#[tokio::test]
async fn refreshing_rotates_the_tokens_and_a_revoked_grant_disconnects_the_account() {
    let (app, fake) = app_with_fake().await;
    let (session, body) = microsoft_login(
        &app,
        &fake,
        "r@example.com",
        Identity::new("oid-refresh", "r@example.com"),
    )
    .await;
    let id = id_at(&body, &["completeOAuth", "account"]);
    let read_ciphertexts = || async {
        let row = app
            .db()
            .await
            .query_one(
                "SELECT access_token_ciphertext, refresh_token_ciphertext FROM oauth_accounts",
                &[],
            )
            .await
            .unwrap();
        (row.get::<_, Vec<u8>>(0), row.get::<_, Vec<u8>>(1))
    };
    let before = read_ciphertexts().await;
    let issued_before = fake.issued_tokens().len();
    let refresh = |token: String| {
        let app = &app;
        let id = id.clone();
        async move {
            app.gql_as(
                Some(&token),
                &format!("mutation($id: ID!) {{ refreshOAuthAccount(id: $id) {{ {ACCOUNT} }} }}"),
                json!({ "id": id }),
            )
            .await
        }
    };
    let body = refresh(session.access.clone()).await;
    assert_eq!(
        body["data"]["refreshOAuthAccount"]["isConnected"], true,
        "{body}"
    );
    assert_eq!(
        fake.issued_tokens().len(),
        issued_before + 2,
        "a new access and refresh token"
    );
    let after = read_ciphertexts().await;
    assert_ne!(before.0, after.0);
    assert_ne!(before.1, after.1);
    assert_no_token(&fake, &body.to_string());
    // The rotated refresh token is the one used next time (the fake forgot the old one).
    let body = refresh(session.access.clone()).await;
    assert_eq!(
        body["data"]["refreshOAuthAccount"]["isConnected"], true,
        "{body}"
    );

    fake.revoke_grants();
    let body = refresh(session.access.clone()).await;
    assert_eq!(
        body["data"]["refreshOAuthAccount"]["isConnected"], false,
        "{body}"
    );
    let listed = me(&app, &session.access).await;
    assert_eq!(
        listed["data"]["me"]["oauthAccounts"][0]["isConnected"],
        false
    );

    // Signing in with the provider again reconnects it.
    let (_, body) = oauth_login(
        &app,
        &fake,
        "MICROSOFT",
        Identity::new("oid-refresh", "r@example.com"),
    )
    .await;
    assert_eq!(
        body["data"]["completeOAuth"]["account"]["isConnected"], true,
        "{body}"
    );
}

#[tokio::test]
async fn another_users_oauth_account_is_not_found() {
    let (app, fake) = app_with_fake().await;
    let (owner, body) = oauth_login(
        &app,
        &fake,
        "GOOGLE",
        Identity::new("owned", "owner@example.com"),
    )
    .await;
    let id = id_at(&body, &["completeOAuth", "account"]);
    let other = app.register("other@example.com").await;
    for mutation in [
        "mutation($id: ID!) { refreshOAuthAccount(id: $id) { id } }",
        "mutation($id: ID!) { disconnectOAuthAccount(id: $id) }",
    ] {
        let body = app
            .gql_as(Some(&other.access), mutation, json!({ "id": id }))
            .await;
        assert_eq!(code(&body), "NOT_FOUND", "{body}");
        let body = app.gql(mutation, json!({ "id": id })).await;
        assert_eq!(code(&body), "UNAUTHENTICATED", "{body}");
    }
    // An admin reading the user cannot list their linked accounts.
    let admin = app.user_with_role("admin@example.com", "ADMIN").await;
    let body = app
        .gql_as(
            Some(&admin.access),
            "query($id: ID!) { user(id: $id) { email oauthAccounts { id } } }",
            json!({ "id": owner.user_id }),
        )
        .await;
    assert_eq!(code(&body), "FORBIDDEN", "{body}");
    assert_eq!(app.count("SELECT count(*) FROM oauth_accounts").await, 1);
}

#[tokio::test]
async fn the_database_holds_no_plaintext_token_state_or_verifier() {
    let (app, fake) = app_with_fake().await;
    let (url, state) = started(&app, None, "GITHUB", "LOGIN").await;
    let (code, _) = fake
        .consent(&url, Identity::new("4242", "plain@example.com"))
        .await;
    let body = complete(&app, None, "GITHUB", &code, &state).await;
    assert!(body["data"]["completeOAuth"]["auth"].is_object(), "{body}");
    let db = app.db().await;
    let accounts = db
        .query(
            "SELECT access_token_ciphertext, refresh_token_ciphertext FROM oauth_accounts",
            &[],
        )
        .await
        .unwrap();
    let states = db
        .query(
            "SELECT state_hash, pkce_verifier_ciphertext, redirect_uri FROM oauth_states",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((accounts.len(), states.len()), (1, 1));
    let mut stored: Vec<Vec<u8>> = Vec::new();
    for row in &accounts {
        stored.push(row.get(0));
        stored.push(row.get(1));
    }
    for row in &states {
        stored.push(row.get(0));
        stored.push(row.get(1));
    }
    let verifiers = fake.verifiers();
    assert_eq!(verifiers.len(), 1);
    let secrets: Vec<String> = fake
        .issued_tokens()
        .into_iter()
        .chain(verifiers)
        .chain([state.clone()])
        .collect();
    for bytes in &stored {
        for secret in &secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a secret is stored in clear"
            );
        }
    }
    // Nor does any text column hold one.
    let dump: String = db
        .query_one(
            "SELECT coalesce(string_agg(t::text, ' '), '') FROM (
                SELECT row_to_json(a)::text AS t FROM oauth_accounts a
                UNION ALL SELECT row_to_json(s)::text FROM oauth_states s) x",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for secret in &secrets {
        assert!(
            !dump.contains(secret.as_str()),
            "a secret is stored in clear"
        );
    }
}

#[tokio::test]
async fn rotating_the_encryption_key_rewraps_oauth_tokens_and_verifiers() {
    let (app, fake) = app_with_fake().await;
    let (session, body) = oauth_login(
        &app,
        &fake,
        "GOOGLE",
        Identity::new("rotate-sub", "rotate@example.com"),
    )
    .await;
    let id = id_at(&body, &["completeOAuth", "account"]);
    let new_key = "next:bmV4dC1rZXktbmV4dC1rZXktbmV4dC1rZXktMDAwMiE=";
    let rotate = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_agentry"))
            .arg("rotate-encryption-key")
            .env("DATABASE_URL", &app.database_url)
            .env(
                "AGENTRY_JWT_SECRET",
                "test-secret-test-secret-test-secret-0123",
            )
            .env(
                "AGENTRY_ENCRYPTION_KEYS",
                format!("{new_key},{}", common::TEST_ENCRYPTION_KEYS),
            )
            .output()
            .unwrap()
    };
    let output = rotate();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // One account row (access + refresh token) and one state row (verifier).
    assert!(stdout.contains("rewrapped 2 secrets"), "{stdout}");
    assert!(String::from_utf8_lossy(&rotate().stdout).contains("rewrapped 0 secrets"));

    // A server holding only the new key still decrypts the refresh token.
    let mut config = (*app.state.config).clone();
    config.encryption_keys = Some(new_key.to_owned().into());
    let state = agentry::state::AppState::new(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(agentry::http::serve(
        state,
        listener,
        std::future::pending(),
    ));
    let body: Value = app
        .http
        .post(format!("http://{addr}/graphql"))
        .bearer_auth(&session.access)
        .json(&json!({
            "query": "mutation($id: ID!) { refreshOAuthAccount(id: $id) { isConnected } }",
            "variables": { "id": id },
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["data"]["refreshOAuthAccount"]["isConnected"], true,
        "{body}"
    );
}

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
