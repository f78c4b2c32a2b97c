//! A local OAuth 2.0 provider that behaves like Google, GitHub and Microsoft on the wire:
//! `/authorize` (validates the request and redirects to the callback with a one-time code bound
//! to the PKCE challenge, the redirect URI and the identity signed in at the fake), `/token`
//! (client authentication by HTTP Basic or body; the code grant verifies the S256 verifier and
//! the redirect URI like a real server; the refresh grant rotates; revoked grants answer
//! `invalid_grant`), Google-shaped `/userinfo`, GitHub-shaped `/user` and `/user/emails`, and
//! Microsoft-shaped `/ms/userinfo`.

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
            .route("/ms/userinfo", get(microsoft_userinfo))
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
    let identity = match field("grant_type").as_str() {
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
            pending.identity
        }
        "refresh_token" => match inner.refresh.remove(&field("refresh_token")) {
            Some(identity) => identity,
            None => return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"),
        },
        _ => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    };
    inner.counter += 1;
    let n = inner.counter;
    let access = format!("fake-access-{n}-{}", uuid::Uuid::new_v4().simple());
    let refresh = format!("fake-refresh-{n}-{}", uuid::Uuid::new_v4().simple());
    inner.access.insert(access.clone(), identity.clone());
    inner.refresh.insert(refresh.clone(), identity);
    inner.issued.push(access.clone());
    inner.issued.push(refresh.clone());
    Json(json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": 3600,
        "refresh_token": refresh,
        "scope": "openid email profile",
    }))
    .into_response()
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

async fn microsoft_userinfo(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
) -> Response {
    userinfo(&inner, &headers, |id| {
        json!({
            "sub": format!("pairwise-{}", id.subject),
            "oid": id.subject,
            "tid": id.tenant,
            "email": id.email,
            "name": id.name,
        })
    })
}
