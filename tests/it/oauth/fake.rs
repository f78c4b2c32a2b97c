//! A local OAuth 2.0 provider that behaves like Google, GitHub and Microsoft on the wire:
//! `/authorize` (validates the request and redirects to the callback with a one-time code bound
//! to the PKCE challenge, the redirect URI and the identity signed in at the fake), `/token`
//! (client authentication by HTTP Basic or body; the code grant verifies the S256 verifier and
//! the redirect URI like a real server; the refresh grant rotates; revoked grants answer
//! `invalid_grant`), Google-shaped `/userinfo`, GitHub-shaped `/user` and `/user/emails`, and
//! Microsoft's OpenID Connect side: an RS256 `id_token` in the token response when the flow sent
//! a `nonce` (claims as Microsoft's v2.0 tokens: `iss` per tenant, `aud`, `tid`, `oid`,
//! `nonce`, `email`, `name`), its signing keys at `/ms/keys`, and faults a test can ask for
//! ([`IdTokenFault`]).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use axum::{
    Form, Json, Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The client id the fake knows.
pub const CLIENT_ID: &str = "agentry-test-client";
/// The client secret the fake knows.
pub const CLIENT_SECRET: &str = "fake-client-secret-0123456789";

/// The fake's RSA signing key (PKCS#1 DER, base64), made for these tests only.
const SIGNING_KEY_DER: &str = "MIIEogIBAAKCAQEAuSFZtDecJKwK4h5THk0ovWpmVyuREXNuRyNX4aFx7bGCCzMvRHONGAcb8uOQaykLbgKxQwthgM0iWiAHD3wy5ulyFNh4ghrKjlTpN8/EZOdO3xcklAhXlMLf3qklZvnj21DCEsHWlq98ctT9Mx5Hl7KO3jnGHXSmZprezAO3FjtPllY/v64DeuLu+sQI5mmZ5yBdIYp75wBDJzLzzasR8xwKLEMBWVnDWDUMOCqIHES1YibbnyuvJovYTywMQzM03pkpY/jAIPgI7VAgGvHvdQtZ3SfRdoyA/gJEMyhuTSQQm9k8Rr7Cyw8xRHZhwrhYcjLmpfqprXcz6MKg7ZcA6wIDAQABAoIBABDjA+W2dN27e7qofXh0HVU50V/+L1tiJhsDFE8WhOfjmzMeVh9uUt5wN5JuQ4wi0FIWmMi+zwQKsil6Zmp5L8N0Y92W6VckznkxMZzPrOBvYPhkigeewy5koDsVPr4n6SrmMO25FLPmCfoHh5kUF/+0X+fRaUriixMs6Um+xQKX+nbt72SqJmG9uzHYpTOsjou73+cDnAMmb9FPxdjwnwa3ADAflfPU5LIg7q7KpHVVBymaqCUFGaIXFmawYsz5qlNH/+x3uU9lELz75Sbca/B2v80unK5ooXQhrF8UaeDSwflHOavONt+KXWYaIpHafS5tZubipZ8rwWbtRqzMcvECgYEA8ku0RIHmYoZVx4p/+8AKNWQM/WvTJ+e+vgMrvnXxwYBRzoYz2LmAC0/dT9gEkIMIpNo+23PUheC+yRvV2yAzjhaOrKcRg+cSOGmJQ+JIUaK+wSN24cJIbN76kclREpFtV9kGhNKhgY8Cblc6Xf62oo9vpnBugJqGFGR8rdB2JVUCgYEAw5ns0spC1Jr1mpETW9idekEGB0ifTYp/1HYCnpKhE9anVfrcHA8n5HCXbDixmsIGV61BmTwo4jhS0c0KPpxXTHfyXmYSaTqRGoMQgtvWzdTsvu1Rnd4Bc2oCR5Qz/N5fq3vw/sDx42Aj2JNTHFjRBLpP6Zt8uOI8NhkvWxYkjT8CgYBAsBeDxs6UdVsHeCGtO9s93+Vb72Kjn8qb/kq6gdC2oaS1p7zF2tilrH/gpkKptmIjaSUo/+a4i4VEOgtBgnphMAKNc9lIRvPlXb/JAOvf57xX4jkGExG1B18MdxwPAgaYUpfb9EQsS9sRTHaHy85E3linrhLCgP7VCPMEkMhKNQKBgAn1p3pgNCDxNvpE0tCFahdUgkMSrpHbMIEX9TAv1SXWczTMjjKbjvNxzDQFev2fTYVfXAy6ZHaIWac3IoNnoIZTQTMPTXawNb082TVgjkJyyg86tEIukLJYvn74i+EfTY3ExNOj7W0fcxPPBJdX6mSsO+9wLFyZoGk8xQ2FRh0vAoGAMQA8nEJdKj3yjTtkR/OlKMzd3IXHTGXzP94e9ctgmAzte2yONE8Y5Zy6jJTIBZg9q5IxNW6SLZDn5VT78nfanpnIt4JVSI3TZF6BBQQp4N7Yg3MElaLlPjQ7cM6n7JNsoXYR6yp6+lYXIh4NEOeels3wyaEqaJ7wxNWOS21tDpE=";
/// Its modulus, base64url (the JWK `n`).
const SIGNING_KEY_N: &str = "uSFZtDecJKwK4h5THk0ovWpmVyuREXNuRyNX4aFx7bGCCzMvRHONGAcb8uOQaykLbgKxQwthgM0iWiAHD3wy5ulyFNh4ghrKjlTpN8_EZOdO3xcklAhXlMLf3qklZvnj21DCEsHWlq98ctT9Mx5Hl7KO3jnGHXSmZprezAO3FjtPllY_v64DeuLu-sQI5mmZ5yBdIYp75wBDJzLzzasR8xwKLEMBWVnDWDUMOCqIHES1YibbnyuvJovYTywMQzM03pkpY_jAIPgI7VAgGvHvdQtZ3SfRdoyA_gJEMyhuTSQQm9k8Rr7Cyw8xRHZhwrhYcjLmpfqprXcz6MKg7ZcA6w";
/// The key id the fake publishes and puts in its ID tokens' headers.
pub const SIGNING_KEY_ID: &str = "fake-ms-key-1";
/// Another RSA key, which the fake does not publish (for forged tokens).
const FORGER_KEY_DER: &str = "MIIEpQIBAAKCAQEAwY5qN8qJHblKacF9RWKcNQCELp5RwS0G8T0rsyeycGLQUNHnNVaoOC6q6Y2EmP2hSwYP7SLdWwlLXHI9kxBenmBWElLNtmHNlF26q24D9aT/k6/DWkpHyhmR7e6hXJvoGHbVd4r1Ckxmrv98jRPNN/XlLlCxyk76ZSjemuf1HxSYHzx29JLyO4NWWg5kh8KiSecBDb2AgLEVoFdJqkKOI+FxNU8lfIEq3BeBdeDrTq1byuOe2Y0Xx3QCGUoyFF4m1l9DacuowklP/1mzGdorIyztPOjZA0CKZEEnnCzmYTEilUnxAccUnfwCADuDaiWLvp6XOfDYP1MYbRW3/ho7YwIDAQABAoIBAF3zpoxhQ/BJJh0yff+lj4RMtVy5nZ6CoDmOAz3JuZxC4rIwSSYDY9EtmemXN3NZvaagkS9+umq7lriPfWL60arXwT/QsKjkTXlEi901oDdm+WXzLYSQxMsNYV/Ycrv0s5LYb+LAcRQoJLmyKv+Byp3svmueYMZ+Up2y2mbfzARizbWtWXYhoMORA+qVS6ByD0/rgpUWNUudFr/WZmTJ+lomukVME8pkCgQbGR8mKu/8zW2ddB8m9cRIYy8OUvwMTQ6JgPJ3JRYAfc76pCZICJ4WE4WIZR6GMs7giMqxHYcdqCAebNmic4YyxV81PDyyQj/5d9FBegh7sl1dI4uDyDUCgYEA+Zey3WUZ3aIu6DAHZvlyp0/zZl30+PjaqOVPuQMpHJIJAnpOFMRWh4rCqyPHd0st93np9DegTZ+IGzqnr7Crf93CZs2LNIXbzZ00fGoFczElVgmbQSQDhrFLZh5R4QZKtItBZeOx70N0tlZaG2nndEFKyGrgGrn1h55up30s3yUCgYEAxoZzXBcq5pkx3OM6gyQQqETzZy2vx9OoOs4Zx0sHsq4irKvQ32rP77j9NQligLcaCA2xHgX9YEMg5v2nSP8TKO4S/V8ggWRyZ1YXO/dwdOz5bSPHw4F1meMc5qw+3QDnjfYF6YRg95+AG9Fja6m+u+VqLmoLQPGFUCE4DBeoDecCgYEAoUxQ8lTw91NlfvXzArA4UToQ8VnNA81G+hlfgRAy1Fzn56sEpNURmnypO5JeyJBUP3eRIxuDxEZR3k70qUzCOFsm0+sHiETtfJ6YmcKmjP/4wfZpWBqfEL+pG3CCt6qqQq0v8VnJ1vdACMobZ1X0lyPO4WB4Pa1pqGBR4Hm7suUCgYEAgXJ31AtzOMuZXMt5grtIdUAIajW7EZQsdLOg0XdV/KdZCrg5yQRPs6Muz59f8Ef0HF45KDeFoHgFAzlQE+PmrWCXV0jo3BYQFttm6P4OAN/oP8b94bgPY5lYZfzYPKjzU3ihIEPmKnCBSyI8Lp6PNNuBYeRZlC4n3Djc392pAe8CgYEAmLfDK9kQaVxgyDqsIE47rkI0HG5zzO+JTDw+nNfgcUqxnN8GpIIYQ1epU40Oxzkujf/23/Gq+eNIaOgIWngbB7Mdb23pjbHIbyEJpb8KTL6Kmq4hZWI6xptDYMUfpnRTE0cToi8y/6nMO9dhlTqvvmF+YBDRPvLZqoEzhixmQrg=";

/// Something wrong with the next ID tokens, as an attacker or a misconfiguration would make it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdTokenFault {
    /// No `id_token` in the token response.
    Missing,
    /// Signed by a key the fake does not publish (under the published key id).
    ForgedSignature,
    /// Issued to another application.
    WrongAudience,
    /// Minted for another flow (another nonce): a replayed token.
    WrongNonce,
    /// From another tenant's issuer than the token's `tid`.
    WrongIssuer,
    /// Expired an hour ago.
    Expired,
}

/// A person at the provider.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Google `sub`, GitHub numeric id (as text), Microsoft `oid`.
    pub subject: String,
    /// Email address.
    pub email: String,
    /// Whether the provider verified the email.
    pub email_verified: bool,
    /// Display name.
    pub name: String,
    /// Microsoft tenant id.
    pub tenant: String,
}

impl Identity {
    /// A verified identity.
    pub fn new(subject: &str, email: &str) -> Self {
        Self {
            subject: subject.to_owned(),
            email: email.to_owned(),
            email_verified: true,
            name: "Ada Lovelace".to_owned(),
            tenant: "9188040d-6c67-4c5b-b112-36a304b66dad".to_owned(),
        }
    }
}

struct PendingCode {
    challenge: String,
    redirect_uri: String,
    identity: Identity,
    /// The OpenID Connect nonce of the authorization request, if it sent one.
    nonce: Option<String>,
}

#[derive(Default)]
struct Inner {
    signed_in: Option<Identity>,
    codes: HashMap<String, PendingCode>,
    access: HashMap<String, Identity>,
    refresh: HashMap<String, Identity>,
    /// Every token the fake issued, to look for in responses and the database.
    issued: Vec<String>,
    /// Every PKCE verifier the fake received.
    verifiers: Vec<String>,
    /// Query of the last `/authorize` request.
    last_authorize: HashMap<String, String>,
    counter: u64,
    /// What to get wrong in the ID tokens issued from now on.
    id_token_fault: Option<IdTokenFault>,
}

/// The running fake.
#[derive(Clone)]
pub struct FakeOAuth {
    base: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeOAuth {
    /// Starts the fake on 127.0.0.1:0.
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/userinfo", get(google_userinfo))
            .route("/user", get(github_user))
            .route("/user/emails", get(github_emails))
            .route("/ms/keys", get(microsoft_keys))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake OAuth provider");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { base, inner }
    }

    /// Gets the next ID tokens wrong this way (`None`: right again).
    pub fn fault_id_tokens(&self, fault: Option<IdTokenFault>) {
        self.lock().id_token_fault = fault;
    }

    /// `http://addr`.
    pub fn base_url(&self) -> String {
        self.base.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Who the browser is signed in as at the provider.
    pub fn sign_in_as(&self, identity: Identity) {
        self.lock().signed_in = Some(identity);
    }

    /// The browser's visit to the authorization URL, as `identity`: returns `(code, state)` from
    /// the redirect to the callback, or panics with the fake's refusal.
    pub async fn consent(&self, authorization_url: &str, identity: Identity) -> (String, String) {
        self.sign_in_as(identity);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let response = client
            .get(authorization_url)
            .send()
            .await
            .expect("GET authorize");
        assert_eq!(
            response.status(),
            StatusCode::SEE_OTHER,
            "authorize refused: {}",
            response.text().await.unwrap_or_default()
        );
        let location = response.headers()[header::LOCATION]
            .to_str()
            .expect("location")
            .to_owned();
        let url = url::Url::parse(&location).expect("callback URL");
        let param = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
                .unwrap_or_else(|| panic!("callback without {name}: {location}"))
        };
        (param("code"), param("state"))
    }

    /// Revokes every grant: refresh tokens answer `invalid_grant` from now on.
    pub fn revoke_grants(&self) {
        self.lock().refresh.clear();
    }

    /// Every access and refresh token issued so far.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.lock().issued.clone()
    }

    /// Every PKCE verifier received so far.
    pub fn verifiers(&self) -> Vec<String> {
        self.lock().verifiers.clone()
    }

    /// The query parameters of the last authorization request.
    pub fn last_authorize(&self) -> HashMap<String, String> {
        self.lock().last_authorize.clone()
    }
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (
        status,
        Json(json!({ "error": error, "error_description": format!("fake provider: {error}") })),
    )
        .into_response()
}

async fn authorize(
    State(inner): State<Arc<Mutex<Inner>>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut inner = inner.lock().unwrap_or_else(PoisonError::into_inner);
    inner.last_authorize = query.clone();
    let param = |name: &str| query.get(name).cloned().unwrap_or_default();
    if param("response_type") != "code" {
        return (StatusCode::BAD_REQUEST, "response_type must be code").into_response();
    }
    if param("client_id") != CLIENT_ID {
        return (StatusCode::BAD_REQUEST, "unknown client_id").into_response();
    }
    if param("code_challenge_method") != "S256" || param("code_challenge").len() < 43 {
        return (StatusCode::BAD_REQUEST, "PKCE S256 required").into_response();
    }
    let redirect_uri = param("redirect_uri");
    if url::Url::parse(&redirect_uri).is_err() || param("state").is_empty() {
        return (StatusCode::BAD_REQUEST, "redirect_uri and state required").into_response();
    }
    let Some(identity) = inner.signed_in.clone() else {
        return (StatusCode::UNAUTHORIZED, "nobody signed in at the fake").into_response();
    };
    inner.counter += 1;
    let code = format!("code-{}-{}", inner.counter, uuid::Uuid::new_v4().simple());
    inner.codes.insert(
        code.clone(),
        PendingCode {
            challenge: param("code_challenge"),
            redirect_uri: redirect_uri.clone(),
            identity,
            nonce: query.get("nonce").cloned(),
        },
    );
    let mut target = url::Url::parse(&redirect_uri).expect("checked above");
    target
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &param("state"));
    Redirect::to(target.as_str()).into_response()
}

/// Client authentication: HTTP Basic (form-urlencoded id and secret) or the request body.
fn client_authenticated(headers: &HeaderMap, form: &HashMap<String, String>) -> bool {
    if let Some(basic) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic) else {
            return false;
        };
        let decoded = String::from_utf8_lossy(&decoded).into_owned();
        return decoded == format!("{CLIENT_ID}:{CLIENT_SECRET}");
    }
    form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
        && form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET)
}

async fn token(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if !client_authenticated(&headers, &form) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let mut inner = inner.lock().unwrap_or_else(PoisonError::into_inner);
    let field = |name: &str| form.get(name).cloned().unwrap_or_default();
    let (identity, nonce) = match field("grant_type").as_str() {
        "authorization_code" => {
            // One-time: the code is gone whether or not the exchange succeeds.
            let Some(pending) = inner.codes.remove(&field("code")) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            };
            let verifier = field("code_verifier");
            inner.verifiers.push(verifier.clone());
            let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(Sha256::digest(verifier.as_bytes()));
            if challenge != pending.challenge || field("redirect_uri") != pending.redirect_uri {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            (pending.identity, pending.nonce)
        }
        "refresh_token" => match inner.refresh.remove(&field("refresh_token")) {
            Some(identity) => (identity, None),
            None => return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"),
        },
        _ => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    };
    inner.counter += 1;
    let n = inner.counter;
    let access = format!("fake-access-{n}-{}", uuid::Uuid::new_v4().simple());
    let refresh = format!("fake-refresh-{n}-{}", uuid::Uuid::new_v4().simple());
    let id_token = nonce
        .filter(|_| inner.id_token_fault != Some(IdTokenFault::Missing))
        .map(|nonce| id_token(&identity, &nonce, inner.id_token_fault));
    inner.access.insert(access.clone(), identity.clone());
    inner.refresh.insert(refresh.clone(), identity);
    inner.issued.push(access.clone());
    inner.issued.push(refresh.clone());
    let mut body = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": 3600,
        "refresh_token": refresh,
        "scope": "openid email profile",
    });
    if let Some(id_token) = id_token {
        body["id_token"] = json!(id_token);
    }
    Json(body).into_response()
}

fn bearer_identity(inner: &Arc<Mutex<Inner>>, headers: &HeaderMap) -> Option<Identity> {
    let token = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    inner
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .access
        .get(token)
        .cloned()
}

fn userinfo(
    inner: &Arc<Mutex<Inner>>,
    headers: &HeaderMap,
    shape: impl FnOnce(Identity) -> Value,
) -> Response {
    match bearer_identity(inner, headers) {
        Some(identity) => Json(shape(identity)).into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "invalid_token" })),
        )
            .into_response(),
    }
}

async fn google_userinfo(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap) -> Response {
    userinfo(
        &inner,
        &headers,
        |id| json!({ "sub": id.subject, "email": id.email, "email_verified": id.email_verified, "name": id.name }),
    )
}

async fn github_user(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap) -> Response {
    userinfo(&inner, &headers, |id| {
        let numeric: u64 = id.subject.parse().expect("GitHub ids are numbers");
        json!({ "id": numeric, "login": "ada", "name": id.name, "email": null })
    })
}

async fn github_emails(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap) -> Response {
    userinfo(&inner, &headers, |id| {
        json!([
            { "email": "ada-old@users.noreply.example", "primary": false, "verified": true, "visibility": null },
            { "email": id.email, "primary": true, "verified": id.email_verified, "visibility": "private" },
        ])
    })
}

/// The issuer of the fake's ID tokens for tenant `tid` (tests configure
/// `AGENTRY_OAUTH_MICROSOFT_ISSUER` as `FAKE_ISSUER_TEMPLATE`).
pub const FAKE_ISSUER_TEMPLATE: &str = "https://login.fake.test/{tenantid}/v2.0";

/// An ID token for `identity`, shaped like Microsoft's v2.0 tokens, with `fault` applied.
fn id_token(identity: &Identity, nonce: &str, fault: Option<IdTokenFault>) -> String {
    let now = chrono::Utc::now().timestamp();
    let tenant = if fault == Some(IdTokenFault::WrongIssuer) {
        "ffffffff-0000-0000-0000-000000000000"
    } else {
        identity.tenant.as_str()
    };
    let claims = json!({
        "iss": FAKE_ISSUER_TEMPLATE.replace("{tenantid}", tenant),
        "aud": if fault == Some(IdTokenFault::WrongAudience) { "another-app" } else { CLIENT_ID },
        "sub": format!("pairwise-{}", identity.subject),
        "oid": identity.subject,
        "tid": identity.tenant,
        "nonce": if fault == Some(IdTokenFault::WrongNonce) { "a-nonce-of-another-flow" } else { nonce },
        "email": identity.email,
        "name": identity.name,
        "iat": now,
        "nbf": now,
        "exp": if fault == Some(IdTokenFault::Expired) { now - 3600 } else { now + 3600 },
    });
    let der = if fault == Some(IdTokenFault::ForgedSignature) {
        FORGER_KEY_DER
    } else {
        SIGNING_KEY_DER
    };
    let der = base64::engine::general_purpose::STANDARD
        .decode(der)
        .expect("test key is base64");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(SIGNING_KEY_ID.to_owned());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_der(&der),
    )
    .expect("sign the fake ID token")
}

/// The published signing keys (JWKS), as Microsoft's `discovery/v2.0/keys`.
async fn microsoft_keys() -> Response {
    Json(json!({
        "keys": [{
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": SIGNING_KEY_ID,
            "n": SIGNING_KEY_N,
            "e": "AQAB",
        }]
    }))
    .into_response()
}
