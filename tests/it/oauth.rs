//! OAuth sign-in and linked accounts through GraphQL, against a local fake provider that checks
//! PKCE and redirect URIs like a real one: sign-up, sign-in, linking, unlinking rules, refresh
//! and revocation, every misuse of `state`, wrong verifiers and redirect URIs, conflicts, and
//! what is stored.

use crate::common;
mod fake;
mod microsoft;
mod misuse;
mod stored;

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
