//! Sessions: issuing token pairs, rotating refresh tokens with reuse detection, logout, and the
//! one-query authentication of every request.

use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use uuid::Uuid;

use crate::{
    crypto::tokens::{TokenError, hash_refresh_token, new_refresh_token},
    error::{AppError, AppResult},
    request::{Identity, RequestMeta, Viewer},
    state::{AppState, Revocation},
    users::{
        audit::{self, actions},
        model::{self, NewSession, UserRow, UserStatus},
    },
};

/// A fresh access + refresh token pair for a user.
#[derive(Debug)]
pub struct AuthTokens {
    /// Signed JWT.
    pub access_token: String,
    /// When the access token expires.
    pub access_token_expires_at: DateTime<Utc>,
    /// Opaque refresh token (shown once; only its hash is stored).
    pub refresh_token: SecretString,
    /// Absolute end of the session family.
    pub refresh_token_expires_at: DateTime<Utc>,
    /// The signed-in user.
    pub user: UserRow,
}

/// Longest `User-Agent` kept on a session.
const MAX_USER_AGENT: usize = 256;

/// Starts a new session (refresh-token family) for `user` and returns its first token pair.
pub async fn start(
    state: &AppState,
    conn: &mut AsyncPgConnection,
    user: UserRow,
    meta: &RequestMeta,
) -> AppResult<AuthTokens> {
    use crate::db::schema::{sessions, users};
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;

    let session_id = Uuid::now_v7();
    let refresh = new_refresh_token();
    let expires_at = Utc::now()
        + chrono::Duration::seconds(
            i64::try_from(state.config.refresh_token_ttl_secs).unwrap_or(i64::MAX / 1000),
        );
    let user_agent = meta
        .user_agent
        .as_deref()
        .map(|ua| ua.chars().take(MAX_USER_AGENT).collect::<String>());
    let ip = meta.ip.to_string();
    diesel::insert_into(sessions::table)
        .values(NewSession {
            id: session_id,
            user_id: user.id,
            refresh_token_hash: &hash_refresh_token(refresh.expose_secret()),
            expires_at,
            user_agent: user_agent.as_deref(),
            ip: Some(&ip),
        })
        .execute(conn)
        .await?;
    let user: UserRow = diesel::update(users::table.find(user.id))
        .set(users::last_login_at.eq(diesel::dsl::now))
        .returning(UserRow::as_returning())
        .get_result(conn)
        .await?;
    let (access_token, access_token_expires_at) =
        state.jwt.issue(user.id, session_id, user.role.as_str())?;
    Ok(AuthTokens {
        access_token,
        access_token_expires_at,
        refresh_token: refresh,
        refresh_token_expires_at: expires_at,
        user,
    })
}

/// Exchanges a refresh token for a new pair. The presented token is retired; presenting a
/// retired token again revokes its whole family and writes an audit row.
pub async fn refresh(state: &AppState, meta: &RequestMeta, token: &str) -> AppResult<AuthTokens> {
    state.limiters.check_sign_in(meta.ip, None)?;
    if token.is_empty() {
        return Err(AppError::bad_input("refreshToken", "must not be empty"));
    }
    let presented = hash_refresh_token(token);
    let next = new_refresh_token();
    let mut conn = state.pool.get().await?;
    let rotated = model::rotate_refresh_token(
        &mut conn,
        &presented,
        &hash_refresh_token(next.expose_secret()),
    )
    .await?;
    let Some(session) = rotated else {
        return Err(refused_refresh(state, &mut conn, meta, &presented).await);
    };
    let user = model::find_user(&mut conn, session.user_id)
        .await?
        .filter(|u| u.status == UserStatus::Active)
        .ok_or_else(|| AppError::Unauthenticated("account suspended".into()))?;
    let (access_token, access_token_expires_at) =
        state.jwt.issue(user.id, session.id, user.role.as_str())?;
    Ok(AuthTokens {
        access_token,
        access_token_expires_at,
        refresh_token: next,
        refresh_token_expires_at: session.expires_at,
        user,
    })
}

/// Explains why a refresh token was not accepted, revoking its family if it was replayed.
async fn refused_refresh(
    state: &AppState,
    conn: &mut AsyncPgConnection,
    meta: &RequestMeta,
    presented: &[u8],
) -> AppError {
    let found = match model::find_session_by_token(conn, presented).await {
        Ok(found) => found,
        Err(e) => return e.into(),
    };
    match found {
        Some((session, false)) => {
            // Reuse: whoever holds the newer token and whoever replayed this one cannot be
            // told apart, so the whole family ends.
            let was_live =
                match model::revoke_session(conn, session.id, "refresh token reuse").await {
                    Ok(live) => live,
                    Err(e) => return e.into(),
                };
            tracing::warn!(
                session.id = %session.id,
                user.id = %session.user_id,
                "refresh token reuse: session family revoked"
            );
            let details = json!({ "sessionId": session.id, "wasLive": was_live });
            if let Err(e) = audit::record(
                conn,
                Some(meta),
                None,
                actions::REFRESH_TOKEN_REUSE,
                Some(session.user_id),
                details,
            )
            .await
            {
                return e.into();
            }
            state.revoke(Revocation::Session(session.id));
            AppError::Unauthenticated(
                "refresh token was already used: the session has been revoked, sign in again"
                    .into(),
            )
        }
        Some((_, true)) => AppError::Unauthenticated("session expired or revoked".into()),
        None => AppError::Unauthenticated("invalid refresh token".into()),
    }
}

/// Ends the session of `token` (or every session of its user with `all`). Returns false when
/// the token is unknown, already revoked, or belongs to someone other than the viewer.
pub async fn logout(
    state: &AppState,
    viewer: Option<&Viewer>,
    token: &str,
    all: bool,
) -> AppResult<bool> {
    let mut conn = state.pool.get().await?;
    let found = model::find_session_by_token(&mut conn, &hash_refresh_token(token)).await?;
    let Some((session, true)) = found else {
        return Ok(false);
    };
    if session.revoked_at.is_some() || viewer.is_some_and(|v| v.id() != session.user_id) {
        return Ok(false);
    }
    if all {
        model::revoke_user_sessions(&mut conn, session.user_id, None, "logout all").await?;
        state.revoke(Revocation::User(session.user_id));
    } else {
        model::revoke_session(&mut conn, session.id, "logout").await?;
        state.revoke(Revocation::Session(session.id));
    }
    Ok(true)
}

/// Whether `viewer`'s session is still live and its user active and of the same role (a
/// WebSocket that may have missed a revocation asks). A database error answers true: the
/// socket's requests would fail on their own, and its token still expires.
pub async fn still_valid(state: &AppState, viewer: &Viewer) -> bool {
    let found = async {
        let mut conn = state.pool.get().await?;
        let user =
            model::find_active_session_user(&mut conn, viewer.session_id, viewer.id()).await?;
        Ok::<_, AppError>(user)
    }
    .await;
    match found {
        Ok(Some(user)) => user.role == viewer.user.role,
        Ok(None) => false,
        Err(_) => true,
    }
}

/// Checks a bearer access token: signature and claims, then one query for a live session of an
/// active user, unless the session cache found that session live moments ago (see
/// [`crate::users::session_cache`]: revocations evict it first). Refusals are an
/// [`Identity::Rejected`] with a reason safe to show.
pub async fn authenticate(state: &AppState, bearer: &str) -> AppResult<Identity> {
    let claims = match state.jwt.verify(bearer) {
        Ok(claims) => claims,
        Err(e @ (TokenError::Expired | TokenError::Invalid)) => {
            return Ok(Identity::Rejected(e.to_string()));
        }
    };
    let user = match state.sessions.get(claims.sid, claims.sub) {
        Some(user) => Some(user),
        None => {
            let ticket = state.sessions.ticket();
            let mut conn = state.pool.get().await?;
            let user = model::find_active_session_user(&mut conn, claims.sid, claims.sub).await?;
            if let Some(user) = &user {
                state.sessions.keep(ticket, claims.sid, user);
            }
            user
        }
    };
    Ok(match user {
        Some(user) => Identity::User(Box::new(Viewer {
            user,
            session_id: claims.sid,
            token_expires_at: DateTime::from_timestamp(claims.exp, 0).unwrap_or_else(Utc::now),
        })),
        None => Identity::Rejected("session revoked or expired: sign in again".into()),
    })
}
