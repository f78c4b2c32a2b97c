//! What OAuth keeps: provider tokens refreshed and rotated, sealed in the vault (no plaintext token, state or verifier in the database), re-wrapped when the encryption key rotates; another user's account is not found.

use super::*;

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
