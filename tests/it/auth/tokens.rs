//! Access tokens: required claims, forged and tampered tokens, an access token used to refresh.

use super::*;

/// Builds a JWT by hand with any header and claims, signed with `secret` (HS256).
fn forge(header: Value, claims: Value, secret: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let signing_input = format!("{}.{}", b64(&header), b64(&claims));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(signing_input.as_bytes());
    let signature =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn access_tokens_carry_the_required_claims() {
    let app = TestApp::spawn().await;
    let session = app.register("claims@example.com").await;
    let claims = claims_of(&session.access);
    for claim in [
        "sub", "iss", "aud", "exp", "iat", "jti", "sid", "role", "typ",
    ] {
        assert!(claims.get(claim).is_some(), "missing {claim}: {claims}");
    }
    assert_eq!(claims["typ"], "access");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
}

#[tokio::test]
async fn forged_and_tampered_tokens_are_refused() {
    let app = TestApp::spawn().await;
    let session = app.register("attack@example.com").await;
    let claims = claims_of(&session.access);
    let hs256 = json!({"alg": "HS256", "typ": "JWT"});
    let with = |key: &str, value: Value| {
        let mut c = claims.clone();
        c[key] = value;
        c
    };
    let without = |key: &str| {
        let mut c = claims.clone();
        c.as_object_mut().unwrap().remove(key);
        c
    };
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let attacks = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&claims)
            ),
        ),
        (
            "wrong secret",
            forge(
                hs256.clone(),
                claims.clone(),
                b"another-secret-another-secret-000000",
            ),
        ),
        (
            "HS512 with the right secret",
            forge(
                json!({"alg": "HS512", "typ": "JWT"}),
                claims.clone(),
                SECRET,
            ),
        ),
        (
            "wrong audience",
            forge(hs256.clone(), with("aud", json!("someone-else")), SECRET),
        ),
        (
            "wrong issuer",
            forge(hs256.clone(), with("iss", json!("evil")), SECRET),
        ),
        (
            "expired",
            forge(
                hs256.clone(),
                with("exp", json!(chrono::Utc::now().timestamp() - 5)),
                SECRET,
            ),
        ),
        ("no exp", forge(hs256.clone(), without("exp"), SECRET)),
        ("no aud", forge(hs256.clone(), without("aud"), SECRET)),
        ("no sub", forge(hs256.clone(), without("sub"), SECRET)),
        (
            "wrong type",
            forge(hs256.clone(), with("typ", json!("refresh")), SECRET),
        ),
        (
            "unknown session",
            forge(
                hs256.clone(),
                with("sid", json!(uuid::Uuid::now_v7())),
                SECRET,
            ),
        ),
        (
            "someone else's sub",
            forge(
                hs256.clone(),
                with("sub", json!(uuid::Uuid::now_v7())),
                SECRET,
            ),
        ),
        ("refresh token as access token", session.refresh.clone()),
        ("garbage", "not-a-token".to_owned()),
    ];
    for (name, token) in attacks {
        let body = app.gql_as(Some(&token), ME, json!({})).await;
        assert_eq!(code(&body), "UNAUTHENTICATED", "{name}: {body}");
    }
    // The genuine token still works, and forging it with the right secret is accepted (the test's
    // forge is faithful).
    let body = app
        .gql_as(Some(&forge(hs256, claims, SECRET)), ME, json!({}))
        .await;
    assert_eq!(body["data"]["me"]["email"], "attack@example.com", "{body}");
}

#[tokio::test]
async fn an_access_token_used_as_a_refresh_token_is_refused() {
    let app = TestApp::spawn().await;
    let session = app.register("swap@example.com").await;
    let body = app.gql(REFRESH, json!({"t": session.access})).await;
    assert_eq!(code(&body), "UNAUTHENTICATED", "{body}");
}
