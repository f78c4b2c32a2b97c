//! OAuth rules: start a code flow (PKCE S256 + one-time state), complete it (sign in, sign up,
//! or link), refresh and disconnect linked accounts, and re-encrypt their secrets.
//!
//! Accounts are matched by the provider's subject id only. An email never links anything: a
//! new provider account whose email belongs to an existing user is refused until that user
//! signs in and links it themselves.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use oauth2::{
    AuthorizationCode, CsrfToken, HttpClientError, PkceCodeChallenge, PkceCodeVerifier,
    RefreshToken, RequestTokenError, Scope, TokenResponse, basic::BasicErrorResponse,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{
    crypto::vault::{SecretSlot, Vault},
    db::schema::{oauth_accounts, oauth_states},
    error::{AppError, AppResult, unique_or},
    oauth::{
        id_token,
        model::{self, NewOAuthAccount, NewOAuthState, OAuthAccountRow},
        providers::{IdentityProvider, IdpClient, Profile, Tokens},
    },
    request::{RequestMeta, Viewer},
    state::AppState,
    users::{
        self,
        audit::{self, actions},
        model::UserStatus,
        sessions::{self, AuthTokens},
    },
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
struct Grant {
    access: SecretString,
    refresh: Option<SecretString>,
    expires_at: Option<DateTime<Utc>>,
}

impl Grant {
    fn from_response(token: &Tokens) -> Self {
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

fn verifier_slot(id: Uuid, user_id: Option<Uuid>) -> SecretSlot<'static> {
    SecretSlot {
        table: "oauth_states",
        column: "pkce_verifier_ciphertext",
        row_id: id,
        user_id: user_id.unwrap_or(Uuid::nil()),
    }
}

fn token_slot(column: &'static str, id: Uuid, user_id: Uuid) -> SecretSlot<'static> {
    SecretSlot {
        table: "oauth_accounts",
        column,
        row_id: id,
        user_id,
    }
}

const ACCESS: &str = "access_token_ciphertext";
const REFRESH: &str = "refresh_token_ciphertext";

fn encrypt(vault: &Vault, slot: SecretSlot<'_>, secret: &SecretString) -> AppResult<Vec<u8>> {
    vault
        .encrypt(slot, secret)
        .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("cannot encrypt")))
}

fn decrypt(vault: &Vault, slot: SecretSlot<'_>, stored: &[u8]) -> AppResult<SecretString> {
    vault.decrypt(slot, stored).map_err(|e| {
        AppError::Internal(
            anyhow::Error::new(e).context(format!("cannot decrypt {}.{}", slot.table, slot.column)),
        )
    })
}

fn not_found() -> AppError {
    AppError::NotFound {
        what: "OAuth account",
    }
}

fn kind_of(row: &OAuthAccountRow) -> AppResult<IdentityProvider> {
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
enum TokenFailure {
    /// The provider answered with an OAuth error code (`invalid_grant`, …).
    Refused(String),
    /// The provider could not be reached or answered something unreadable.
    Broken(&'static str),
}

type TokenError = RequestTokenError<HttpClientError<reqwest::Error>, BasicErrorResponse>;

fn classify(kind: IdentityProvider, err: TokenError) -> TokenFailure {
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

fn token_endpoint_error(kind: IdentityProvider, failure: TokenFailure, what: &str) -> AppError {
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
        .request_async(&state.oauth_http)
        .await
        .map_err(|e| token_endpoint_error(kind, classify(kind, e), "the authorization code"))?;
    let grant = Grant::from_response(&token);
    let profile = provider
        .fetch_profile(&state.oauth_http, &token, &id_token::nonce_for(state_param))
        .await?;
    match (claimed.intent, claimed.user_id) {
        (Intent::Link, Some(user_id)) => link(state, meta, user_id, provider, profile, grant).await,
        (Intent::Login, _) => login(state, meta, provider, profile, grant).await,
        // The table's CHECK makes this impossible; never fall back to signing someone in.
        (Intent::Link, None) => Err(AppError::Internal(anyhow::anyhow!(
            "LINK state without a user"
        ))),
    }
}

/// LOGIN: the linked user signs in; a new subject with an unclaimed verified email signs up.
async fn login(
    state: &AppState,
    meta: &RequestMeta,
    provider: &IdpClient,
    profile: Profile,
    grant: Grant,
) -> AppResult<Completion> {
    let kind = provider.kind;
    let name = kind.display_name();
    let mut conn = state.pool.get().await?;
    conn.transaction::<_, AppError, _>(async move |conn| {
        if let Some(account) = model::find_by_subject(conn, kind.as_str(), &profile.subject).await? {
            let user = users::model::find_user(conn, account.user_id)
                .await?
                .ok_or_else(|| AppError::Internal(anyhow::anyhow!("linked user missing")))?;
            if user.status != UserStatus::Active {
                return Err(AppError::Unauthenticated("this account is suspended".into()));
            }
            let account = save_grant(state, conn, &account, profile.email.as_deref(), &grant).await?;
            let tokens = sessions::start(state, conn, user, meta).await?;
            tracing::info!(user.id = %account.user_id, provider = kind.as_str(), "signed in with OAuth");
            return Ok(Completion { intent: Intent::Login, tokens: Some(tokens), account, created: false });
        }
        let Some(email) = profile.email.as_deref() else {
            return Err(AppError::Conflict(if kind == IdentityProvider::Microsoft {
                // Microsoft accounts can carry any address, unverified: a new account from
                // one would let anyone claim anyone's email.
                "Agentry does not take email addresses from Microsoft, which does not verify them: sign up with a password, link Microsoft from your settings, then sign in with Microsoft".to_owned()
            } else {
                format!(
                    "your {name} account has no verified email address: verify one at {name}, or sign up with a password and link {name} from your settings"
                )
            }));
        };
        if users::model::find_user_by_email(conn, email).await?.is_some() {
            return Err(AppError::Conflict(format!(
                "an Agentry account with this email already exists: sign in with your password, then link your {name} account from your settings (accounts are linked only by you)"
            )));
        }
        let account_id = Uuid::now_v7();
        let user = users::service::create_external(
            conn,
            meta,
            email,
            profile.name.as_deref(),
            json!({ "provider": kind.as_str(), "oauthAccountId": account_id }),
        )
        .await?;
        let account = insert_account(state, conn, account_id, user.id, kind, &profile, &grant).await?;
        let tokens = sessions::start(state, conn, user, meta).await?;
        tracing::info!(user.id = %account.user_id, provider = kind.as_str(), "signed up with OAuth");
        Ok(Completion { intent: Intent::Login, tokens: Some(tokens), account, created: true })
    })
    .await
}

/// LINK: attaches the provider account to `user_id`; one linked to someone else is CONFLICT.
async fn link(
    state: &AppState,
    meta: &RequestMeta,
    user_id: Uuid,
    provider: &IdpClient,
    profile: Profile,
    grant: Grant,
) -> AppResult<Completion> {
    let kind = provider.kind;
    let mut conn = state.pool.get().await?;
    conn.transaction::<_, AppError, _>(async move |conn| {
        match model::find_by_subject(conn, kind.as_str(), &profile.subject).await? {
            Some(account) if account.user_id == user_id => {
                let account =
                    save_grant(state, conn, &account, profile.email.as_deref(), &grant).await?;
                Ok(Completion {
                    intent: Intent::Link,
                    tokens: None,
                    account,
                    created: false,
                })
            }
            Some(_) => Err(AppError::Conflict(format!(
                "this {} account is already linked to another Agentry account",
                kind.display_name()
            ))),
            None => {
                let account = insert_account(
                    state,
                    conn,
                    Uuid::now_v7(),
                    user_id,
                    kind,
                    &profile,
                    &grant,
                )
                .await?;
                audit::record(
                    conn,
                    Some(meta),
                    Some(user_id),
                    actions::OAUTH_LINK,
                    Some(user_id),
                    json!({ "provider": kind.as_str(), "oauthAccountId": account.id }),
                )
                .await?;
                tracing::info!(user.id = %user_id, oauth_account.id = %account.id, provider = kind.as_str(), "OAuth account linked");
                Ok(Completion {
                    intent: Intent::Link,
                    tokens: None,
                    account,
                    created: true,
                })
            }
        }
    })
    .await
}

async fn insert_account(
    state: &AppState,
    conn: &mut AsyncPgConnection,
    id: Uuid,
    user_id: Uuid,
    kind: IdentityProvider,
    profile: &Profile,
    grant: &Grant,
) -> AppResult<OAuthAccountRow> {
    let access = encrypt(&state.vault, token_slot(ACCESS, id, user_id), &grant.access)?;
    let refresh = grant
        .refresh
        .as_ref()
        .map(|r| encrypt(&state.vault, token_slot(REFRESH, id, user_id), r))
        .transpose()?;
    diesel::insert_into(oauth_accounts::table)
        .values(NewOAuthAccount {
            id,
            user_id,
            provider: kind.as_str(),
            subject: &profile.subject,
            email: profile.email.as_deref(),
            access_token_ciphertext: &access,
            refresh_token_ciphertext: refresh.as_deref(),
            expires_at: grant.expires_at,
        })
        .returning(OAuthAccountRow::as_returning())
        .get_result(conn)
        .await
        .map_err(unique_or(|| {
            AppError::Conflict(format!(
                "this {} account was linked by another request at the same time",
                kind.display_name()
            ))
        }))
}

/// Stores a new grant on an existing account; a grant without a refresh token keeps the old one.
async fn save_grant(
    state: &AppState,
    conn: &mut AsyncPgConnection,
    account: &OAuthAccountRow,
    email: Option<&str>,
    grant: &Grant,
) -> AppResult<OAuthAccountRow> {
    let access = encrypt(
        &state.vault,
        token_slot(ACCESS, account.id, account.user_id),
        &grant.access,
    )?;
    let refresh = match &grant.refresh {
        Some(r) => Some(encrypt(
            &state.vault,
            token_slot(REFRESH, account.id, account.user_id),
            r,
        )?),
        None => account.refresh_token_ciphertext.clone(),
    };
    Ok(model::store_tokens(
        conn,
        account.id,
        email.or(account.email.as_deref()),
        &access,
        refresh.as_deref(),
        grant.expires_at,
    )
    .await?)
}

/// A user's linked accounts, oldest first.
pub async fn list(state: &AppState, user_id: Uuid) -> AppResult<Vec<OAuthAccountRow>> {
    let mut conn = state.pool.get().await?;
    Ok(model::list_owned(&mut conn, user_id).await?)
}

/// Uses the refresh grant to renew the viewer's account tokens. A grant the provider revoked
/// (`invalid_grant`) marks the account disconnected instead of failing.
pub async fn refresh(state: &AppState, viewer: &Viewer, id: Uuid) -> AppResult<OAuthAccountRow> {
    let account = {
        let mut conn = state.pool.get().await?;
        model::find_owned(&mut conn, viewer.id(), id)
            .await?
            .ok_or_else(not_found)?
    };
    let kind = kind_of(&account)?;
    let provider = state.oauth.get(kind, "id")?;
    let name = kind.display_name();
    let Some(stored) = &account.refresh_token_ciphertext else {
        return Err(AppError::Conflict(format!(
            "{name} issued no refresh token for this account: sign in with {name} again to renew it"
        )));
    };
    let secret = decrypt(
        &state.vault,
        token_slot(REFRESH, account.id, account.user_id),
        stored,
    )?;
    let refresh_token = RefreshToken::new(secret.expose_secret().to_owned());
    let result = provider
        .client(None)?
        .exchange_refresh_token(&refresh_token)
        .request_async(&state.oauth_http)
        .await;
    let mut conn = state.pool.get().await?;
    match result {
        Ok(token) => {
            let grant = Grant::from_response(&token);
            save_grant(state, &mut conn, &account, None, &grant).await
        }
        Err(e) => match classify(kind, e) {
            TokenFailure::Refused(code) if code == "invalid_grant" => {
                tracing::info!(user.id = %viewer.id(), oauth_account.id = %id, provider = kind.as_str(), "OAuth grant revoked: account disconnected");
                Ok(model::mark_disconnected(&mut conn, id).await?)
            }
            failure => Err(token_endpoint_error(
                kind,
                failure,
                "to refresh the account",
            )),
        },
    }
}

/// Unlinks one of the viewer's accounts; refused when it is their last way to sign in.
pub async fn disconnect(
    state: &AppState,
    meta: &RequestMeta,
    viewer: &Viewer,
    id: Uuid,
) -> AppResult<bool> {
    let user_id = viewer.id();
    let mut conn = state.pool.get().await?;
    conn.transaction::<_, AppError, _>(async move |conn| {
        let ids = model::lock_owned_ids(conn, user_id).await?;
        if !ids.contains(&id) {
            return Err(not_found());
        }
        let has_password = users::model::find_user(conn, user_id)
            .await?
            .is_some_and(|u| u.password_hash.is_some());
        if !has_password && ids.len() == 1 {
            return Err(AppError::Conflict(
                "this is your only way to sign in: set a password (changePassword with an empty currentPassword) or link another account first".into(),
            ));
        }
        let deleted: OAuthAccountRow = diesel::delete(oauth_accounts::table.find(id))
            .returning(OAuthAccountRow::as_returning())
            .get_result(conn)
            .await?;
        audit::record(
            conn,
            Some(meta),
            Some(user_id),
            actions::OAUTH_UNLINK,
            Some(user_id),
            json!({ "provider": deleted.provider, "oauthAccountId": id }),
        )
        .await?;
        tracing::info!(user.id = %user_id, oauth_account.id = %id, provider = %deleted.provider, "OAuth account unlinked");
        Ok(true)
    })
    .await
}

/// Re-encrypts every OAuth token and stored PKCE verifier not under the active vault key, in
/// batches. Safe to interrupt and re-run. Returns how many rows were rewrapped.
pub async fn rewrap_all(
    conn: &mut AsyncPgConnection,
    vault: &Vault,
    batch: i64,
) -> anyhow::Result<u64> {
    let tokens = crate::db::for_each_row(
        conn,
        batch,
        async |conn, after, n| model::page_tokens(conn, after, n).await,
        |row| row.0,
        async |conn, (id, user_id, access, refresh)| {
            let stale = vault.needs_rewrap(&access)
                || refresh.as_deref().is_some_and(|r| vault.needs_rewrap(r));
            if !stale {
                return Ok(false);
            }
            let new_access = vault
                .rewrap(token_slot(ACCESS, id, user_id), &access)
                .map_err(|e| anyhow::anyhow!("oauth_accounts row {id} access token: {e}"))?;
            let new_refresh = refresh
                .as_deref()
                .map(|r| vault.rewrap(token_slot(REFRESH, id, user_id), r))
                .transpose()
                .map_err(|e| anyhow::anyhow!("oauth_accounts row {id} refresh token: {e}"))?;
            Ok(model::swap_tokens(
                conn,
                id,
                (&access, refresh.as_deref()),
                (&new_access, new_refresh.as_deref()),
            )
            .await?)
        },
    )
    .await?;
    let verifiers = crate::db::for_each_row(
        conn,
        batch,
        async |conn, after, n| model::page_verifiers(conn, after, n).await,
        |row| row.0,
        async |conn, (id, user_id, stored)| {
            if !vault.needs_rewrap(&stored) {
                return Ok(false);
            }
            let fresh = vault
                .rewrap(verifier_slot(id, user_id), &stored)
                .map_err(|e| anyhow::anyhow!("oauth_states row {id}: {e}"))?;
            Ok(model::swap_verifier(conn, id, &stored, &fresh).await?)
        },
    )
    .await?;
    Ok(tokens + verifiers)
}
