//! The OAuth code flow: start it (PKCE S256, a one-time state bound to the browser, an OpenID
//! Connect nonce where the provider's profile is its ID token) and complete it (claim the state,
//! exchange the code, read the profile), then hand over to `accounts` to sign in, sign up or
//! link. What the flow and the accounts share (the grant, the vault slots) lives here too.
//!
//! Accounts are matched by the provider's subject id only. An email never links anything: a
//! new provider account whose email belongs to an existing user is refused until that user
//! signs in and links it themselves.

use chrono::{DateTime, Utc};
use diesel_async::RunQueryDsl;
use oauth2::{
    AuthorizationCode, CsrfToken, HttpClientError, PkceCodeChallenge, PkceCodeVerifier,
    RequestTokenError, Scope, TokenResponse, basic::BasicErrorResponse,
};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{
    crypto::vault::{SecretSlot, Vault},
    db::schema::oauth_states,
    error::{AppError, AppResult},
    oauth::{
        id_token,
        model::{self, NewOAuthState, OAuthAccountRow},
        providers::{IdentityProvider, Tokens},
    },
    request::{RequestMeta, Viewer},
    state::AppState,
    users::sessions::AuthTokens,
};

/// How long a started flow may take before its state is refused.
pub const STATE_TTL_MINUTES: i64 = 10;
/// Longest authorization code accepted.
const MAX_CODE_LEN: usize = 2048;
/// Longest state accepted.
const MAX_STATE_LEN: usize = 512;

/// What a flow is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Sign in (or sign up) with the provider account.
    Login,
    /// Attach the provider account to the signed-in user.
    Link,
}

impl Intent {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Login => "LOGIN",
            Self::Link => "LINK",
        }
    }

    fn from_stored(stored: &str) -> AppResult<Self> {
        match stored {
            "LOGIN" => Ok(Self::Login),
            "LINK" => Ok(Self::Link),
            other => Err(AppError::Internal(anyhow::anyhow!(
                "unknown OAuth intent {other}"
            ))),
        }
    }
}

/// A started flow: where to send the browser.
#[derive(Debug)]
pub struct Started {
    /// The provider's authorization URL, with client id, redirect URI, scopes, PKCE challenge
    /// and state.
    pub authorization_url: String,
    /// The one-time state (also inside the URL); the provider hands it back to the callback.
    pub state: String,
    /// When the state stops working.
    pub expires_at: DateTime<Utc>,
    /// A secret for the browser that started the flow; `complete` needs it back.
    pub browser_binding: String,
}

/// A completed flow.
#[derive(Debug)]
pub struct Completion {
    /// What the flow was for.
    pub intent: Intent,
    /// A new session (LOGIN only).
    pub tokens: Option<AuthTokens>,
    /// The linked account.
    pub account: OAuthAccountRow,
    /// True when a new Agentry user was created (LOGIN) or the account newly linked (LINK).
    pub created: bool,
}

/// Tokens a provider issued, in clear only until they are encrypted.
pub(super) struct Grant {
    pub(super) access: SecretString,
    pub(super) refresh: Option<SecretString>,
    pub(super) expires_at: Option<DateTime<Utc>>,
}

impl Grant {
    pub(super) fn from_response(token: &Tokens) -> Self {
        Self {
            access: SecretString::from(token.access_token().secret().to_owned()),
            refresh: token
                .refresh_token()
                .map(|r| SecretString::from(r.secret().to_owned())),
            expires_at: token
                .expires_in()
                .and_then(|d| chrono::Duration::from_std(d).ok())
                .map(|d| Utc::now() + d),
        }
    }
}

fn hash_state(state: &str) -> Vec<u8> {
    Sha256::digest(state.as_bytes()).to_vec()
}

pub(super) fn verifier_slot(id: Uuid, user_id: Option<Uuid>) -> SecretSlot<'static> {
    SecretSlot {
        table: "oauth_states",
        column: "pkce_verifier_ciphertext",
        row_id: id,
        user_id: user_id.unwrap_or(Uuid::nil()),
    }
}

pub(super) fn token_slot(column: &'static str, id: Uuid, user_id: Uuid) -> SecretSlot<'static> {
    SecretSlot {
        table: "oauth_accounts",
        column,
        row_id: id,
        user_id,
    }
}

pub(super) const ACCESS: &str = "access_token_ciphertext";
pub(super) const REFRESH: &str = "refresh_token_ciphertext";

pub(super) fn encrypt(
    vault: &Vault,
    slot: SecretSlot<'_>,
    secret: &SecretString,
) -> AppResult<Vec<u8>> {
    vault
        .encrypt(slot, secret)
        .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("cannot encrypt")))
}

pub(super) fn decrypt(
    vault: &Vault,
    slot: SecretSlot<'_>,
    stored: &[u8],
) -> AppResult<SecretString> {
    vault.decrypt(slot, stored).map_err(|e| {
        AppError::Internal(
            anyhow::Error::new(e).context(format!("cannot decrypt {}.{}", slot.table, slot.column)),
        )
    })
}

pub(super) fn not_found() -> AppError {
    AppError::NotFound {
        what: "OAuth account",
    }
}

pub(super) fn kind_of(row: &OAuthAccountRow) -> AppResult<IdentityProvider> {
    IdentityProvider::from_stored(&row.provider)
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("unknown provider {}", row.provider)))
}

fn bad_state(message: &str) -> AppError {
    AppError::bad_input("state", format!("{message}: start again with startOAuth"))
}

/// Starts an authorization code flow with PKCE: stores the hashed state with the encrypted
/// verifier and returns the provider URL to send the browser to.
pub async fn start(
    state: &AppState,
    viewer: Option<&Viewer>,
    kind: IdentityProvider,
    intent: Intent,
    redirect_uri: &str,
) -> AppResult<Started> {
    let provider = state.oauth.get(kind, "provider")?;
    if !state.oauth.redirect_allowed(redirect_uri) {
        return Err(AppError::bad_input(
            "redirectUri",
            "is not an allowed redirect URI (it must exactly match one of AGENTRY_OAUTH_REDIRECT_URIS)",
        ));
    }
    let user_id = match intent {
        Intent::Login => None,
        Intent::Link => Some(
            viewer
                .ok_or_else(|| {
                    AppError::Unauthenticated(
                        "sign in first: LINK attaches the account to the signed-in user".into(),
                    )
                })?
                .id(),
        ),
    };
    let client = provider.client(Some(redirect_uri))?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let csrf = CsrfToken::new_random_len(32);
    let mut request = client
        .authorize_url(|| csrf.clone())
        .set_pkce_challenge(challenge);
    for scope in kind.scopes() {
        request = request.add_scope(Scope::new((*scope).to_owned()));
    }
    for (name, value) in kind.extra_auth_params() {
        request = request.add_extra_param(*name, *value);
    }
    if provider.uses_id_token() {
        // OpenID Connect's replay guard, derived from the state (see `id_token::nonce_for`).
        request = request.add_extra_param("nonce", id_token::nonce_for(csrf.secret()));
    }
    let (url, _) = request.url();
    // Stays in the browser that started the flow (the frontend keeps it in sessionStorage).
    let browser_binding = CsrfToken::new_random_len(32).secret().to_owned();
    let id = Uuid::now_v7();
    let ciphertext = encrypt(
        &state.vault,
        verifier_slot(id, user_id),
        &SecretString::from(verifier.secret().to_owned()),
    )?;
    let now = Utc::now();
    let expires_at = now + chrono::Duration::minutes(STATE_TTL_MINUTES);
    let mut conn = state.pool.get().await?;
    // States past their expiry are useless; an hour's grace keeps "expired" distinguishable
    // from "unknown" for a while.
    model::prune_states(&mut conn, now - chrono::Duration::hours(1)).await?;
    diesel::insert_into(oauth_states::table)
        .values(NewOAuthState {
            id,
            state_hash: &hash_state(csrf.secret()),
            provider: kind.as_str(),
            intent: intent.as_str(),
            user_id,
            pkce_verifier_ciphertext: &ciphertext,
            redirect_uri,
            expires_at,
            browser_binding_hash: &hash_state(&browser_binding),
        })
        .execute(&mut conn)
        .await?;
    Ok(Started {
        authorization_url: url.to_string(),
        state: csrf.secret().to_owned(),
        expires_at,
        browser_binding,
    })
}

/// A state that passed every check and is now used, with its verifier.
struct Claimed {
    intent: Intent,
    user_id: Option<Uuid>,
    redirect_uri: String,
    verifier: SecretString,
}

/// Checks the state (exists, unused, unexpired, this provider, this user for LINK) and marks
/// it used, so it works exactly once.
async fn claim_state(
    state: &AppState,
    viewer: Option<&Viewer>,
    kind: IdentityProvider,
    raw: &str,
    browser_binding: Option<&str>,
) -> AppResult<Claimed> {
    if raw.is_empty() {
        return Err(AppError::bad_input(
            "state",
            "must not be empty: pass the `state` the provider sent to your callback",
        ));
    }
    if raw.len() > MAX_STATE_LEN {
        return Err(bad_state("is unknown"));
    }
    let mut conn = state.pool.get().await?;
    let row = model::find_state(&mut conn, &hash_state(raw))
        .await?
        .ok_or_else(|| bad_state("is unknown"))?;
    if row.used_at.is_some() {
        return Err(bad_state("has already been used"));
    }
    if row.expires_at <= Utc::now() {
        return Err(bad_state("has expired"));
    }
    if row.provider != kind.as_str() {
        return Err(bad_state(&format!(
            "was issued for {}, not {}",
            IdentityProvider::from_stored(&row.provider)
                .map_or("another provider", |p| p.display_name()),
            kind.display_name()
        )));
    }
    // Login CSRF: only the browser that started the flow holds its binding.
    if let Some(expected) = &row.browser_binding_hash {
        let presented = browser_binding.map(hash_state);
        if presented.as_ref() != Some(expected) {
            return Err(AppError::bad_input(
                "browserBinding",
                "does not match this sign-in: send the browserBinding that startOAuth returned to \
                 this browser (a flow started elsewhere cannot be completed here)",
            ));
        }
    }
    let intent = Intent::from_stored(&row.intent)?;
    if intent == Intent::Link {
        match viewer {
            None => {
                return Err(AppError::Unauthenticated(
                    "sign in first: this flow links an account to the user who started it".into(),
                ));
            }
            Some(viewer) if Some(viewer.id()) != row.user_id => {
                return Err(bad_state("was issued to another user"));
            }
            Some(_) => {}
        }
    }
    let row = model::consume_state(&mut conn, row.id)
        .await?
        .ok_or_else(|| bad_state("has already been used"))?;
    let verifier = decrypt(
        &state.vault,
        verifier_slot(row.id, row.user_id),
        &row.pkce_verifier_ciphertext,
    )?;
    Ok(Claimed {
        intent,
        user_id: row.user_id,
        redirect_uri: row.redirect_uri,
        verifier,
    })
}

/// Why a token request failed, without anything the provider sent beyond its error code.
pub(super) enum TokenFailure {
    /// The provider answered with an OAuth error code (`invalid_grant`, …).
    Refused(String),
    /// The provider could not be reached or answered something unreadable.
    Broken(&'static str),
}

type TokenError = RequestTokenError<HttpClientError<reqwest::Error>, BasicErrorResponse>;

pub(super) fn classify(kind: IdentityProvider, err: TokenError) -> TokenFailure {
    let code = |e: &BasicErrorResponse| {
        let code = e.error().to_string();
        // Only a well-formed error code goes into a message; descriptions never do.
        if code.len() <= 64 && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            code
        } else {
            "error".to_owned()
        }
    };
    match err {
        RequestTokenError::ServerResponse(e) => TokenFailure::Refused(code(&e)),
        // GitHub answers errors with HTTP 200 and an error body.
        RequestTokenError::Parse(_, body) => {
            match serde_json::from_slice::<BasicErrorResponse>(&body) {
                Ok(e) => TokenFailure::Refused(code(&e)),
                Err(_) => {
                    // The body may hold tokens: it is never logged.
                    tracing::warn!(
                        provider = kind.as_str(),
                        "OAuth token endpoint sent an unreadable response"
                    );
                    TokenFailure::Broken("sent a response Agentry does not understand")
                }
            }
        }
        RequestTokenError::Request(e) => {
            tracing::warn!(provider = kind.as_str(), error = %e, cause = ?std::error::Error::source(&e).map(ToString::to_string), "OAuth token request failed");
            TokenFailure::Broken("could not be reached")
        }
        RequestTokenError::Other(_) => {
            tracing::warn!(
                provider = kind.as_str(),
                "OAuth token endpoint answered unexpectedly"
            );
            TokenFailure::Broken("answered unexpectedly")
        }
    }
}

pub(super) fn token_endpoint_error(
    kind: IdentityProvider,
    failure: TokenFailure,
    what: &str,
) -> AppError {
    let name = kind.display_name();
    match failure {
        TokenFailure::Refused(code) => {
            AppError::Provider(format!("{name} refused {what} ({code}): start again"))
        }
        TokenFailure::Broken(why) => AppError::Provider(format!("{name}'s token endpoint {why}")),
    }
}

/// Completes a flow: checks the state, exchanges the code with the PKCE verifier, reads the
/// provider profile, then signs in / signs up (LOGIN) or links (LINK).
pub async fn complete(
    state: &AppState,
    meta: &RequestMeta,
    viewer: Option<&Viewer>,
    kind: IdentityProvider,
    code: &str,
    state_param: &str,
    browser_binding: Option<&str>,
) -> AppResult<Completion> {
    state.limiters.check_sign_in(meta.ip, None)?;
    let provider = state.oauth.get(kind, "provider")?;
    if code.is_empty() || code.len() > MAX_CODE_LEN {
        return Err(AppError::bad_input(
            "code",
            "must be the `code` the provider sent to your callback",
        ));
    }
    let claimed = claim_state(state, viewer, kind, state_param, browser_binding).await?;
    let client = provider.client(Some(&claimed.redirect_uri))?;
    let token = client
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .set_pkce_verifier(PkceCodeVerifier::new(
            claimed.verifier.expose_secret().to_owned(),
        ))
        .request_async(&state.operator_http)
        .await
        .map_err(|e| token_endpoint_error(kind, classify(kind, e), "the authorization code"))?;
    let grant = Grant::from_response(&token);
    let profile = provider
        .fetch_profile(
            &state.operator_http,
            &token,
            &id_token::nonce_for(state_param),
        )
        .await?;
    match (claimed.intent, claimed.user_id) {
        (Intent::Link, Some(user_id)) => {
            super::accounts::link(state, meta, user_id, provider, profile, grant).await
        }
        (Intent::Login, _) => super::accounts::login(state, meta, provider, profile, grant).await,
        // The table's CHECK makes this impossible; never fall back to signing someone in.
        (Intent::Link, None) => Err(AppError::Internal(anyhow::anyhow!(
            "LINK state without a user"
        ))),
    }
}
