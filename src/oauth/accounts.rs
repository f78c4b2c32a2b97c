//! Linked accounts: sign in or sign up with one (LOGIN), link one (LINK), list, refresh and
//! disconnect them, and re-encrypt their secrets when the vault key rotates.
//!
//! Accounts are matched by the provider's subject id only. An email never links anything: a
//! new provider account whose email belongs to an existing user is refused until that user
//! signs in and links it themselves.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use oauth2::RefreshToken;
use secrecy::ExposeSecret;
use serde_json::json;
use uuid::Uuid;

use crate::{
    crypto::vault::Vault,
    db::schema::oauth_accounts,
    error::{AppError, AppResult, unique_or},
    oauth::{
        model::{self, NewOAuthAccount, OAuthAccountRow},
        providers::{IdentityProvider, IdpClient, Profile},
        service::{
            ACCESS, Completion, Grant, Intent, REFRESH, TokenFailure, classify, decrypt, encrypt,
            kind_of, not_found, token_endpoint_error, token_slot, verifier_slot,
        },
    },
    request::{RequestMeta, Viewer},
    state::AppState,
    users::{
        self,
        audit::{self, actions},
        model::UserStatus,
        sessions,
    },
};

/// LOGIN: the linked user signs in; a new subject with an unclaimed verified email signs up.
pub(super) async fn login(
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
pub(super) async fn link(
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
        .request_async(&state.operator_http)
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
