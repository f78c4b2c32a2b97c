//! Account rules: sign-up, sign-in, password change, profile.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use uuid::Uuid;

use crate::{
    crypto::password,
    db::schema::users,
    error::{AppError, AppResult, unique_or},
    request::{RequestMeta, Viewer},
    state::{AppState, Revocation},
    users::{
        audit::{self, actions},
        model::{self, NewUser, Role, UserRow, UserStatus},
        sessions::{self, AuthTokens},
        validate::{self, Email},
    },
};

/// What `register` needs, as the client sent it.
pub struct Registration {
    /// Email (any case, surrounding spaces allowed).
    pub email: String,
    /// Password in clear; hashed before it goes anywhere.
    pub password: SecretString,
    /// Display name.
    pub display_name: String,
}

/// Creates an account with a password and signs it in.
pub async fn register(
    state: &AppState,
    meta: &RequestMeta,
    input: Registration,
) -> AppResult<AuthTokens> {
    let email = Email::parse("input.email", &input.email)?;
    let display_name = validate::display_name("input.displayName", &input.display_name)?;
    state
        .limiters
        .check_sign_in(meta.ip, Some(email.as_str()))?;
    password::check_policy(
        "input.password",
        &input.password,
        &[email.as_str(), &display_name],
    )?;
    let mut conn = state.pool.get().await?;
    if model::find_user_by_email(&mut conn, email.as_str())
        .await?
        .is_some()
    {
        return Err(duplicate_email());
    }
    let hash = state.passwords.hash(&input.password).await?;
    conn.transaction::<_, AppError, _>(async move |conn| {
        let user: UserRow = diesel::insert_into(users::table)
            .values(NewUser {
                id: Uuid::now_v7(),
                email: email.as_str(),
                display_name: &display_name,
                password_hash: Some(&hash),
                role: Role::User,
            })
            .returning(UserRow::as_returning())
            .get_result(conn)
            .await
            // A concurrent sign-up for the same email may win the race: CONFLICT, like the check above.
            .map_err(unique_or(duplicate_email))?;
        audit::record(
            conn,
            Some(meta),
            Some(user.id),
            actions::USER_REGISTER,
            Some(user.id),
            json!({}),
        )
        .await?;
        sessions::start(state, conn, user, meta).await
    })
    .await
}

/// Creates an account without a password for someone who signed up through an OAuth provider
/// (inside the caller's transaction), and audits the sign-up with `details`. The email must be
/// one the provider verified; the user can set a password later with `changePassword`.
pub async fn create_external(
    conn: &mut diesel_async::AsyncPgConnection,
    meta: &RequestMeta,
    email: &str,
    name: Option<&str>,
    details: serde_json::Value,
) -> AppResult<UserRow> {
    let email = Email::parse("email", email)?;
    let fallback = email
        .as_str()
        .split('@')
        .next()
        .unwrap_or("user")
        .to_owned();
    let display_name = name
        .map(|n| n.chars().take(100).collect::<String>())
        .and_then(|n| validate::display_name("displayName", &n).ok())
        .or_else(|| validate::display_name("displayName", &fallback).ok())
        .unwrap_or_else(|| "New user".to_owned());
    let user: UserRow = diesel::insert_into(users::table)
        .values(NewUser {
            id: Uuid::now_v7(),
            email: email.as_str(),
            display_name: &display_name,
            password_hash: None,
            role: Role::User,
        })
        .returning(UserRow::as_returning())
        .get_result(conn)
        .await
        // A concurrent sign-up for the same email may win the race: CONFLICT, like the check above.
        .map_err(unique_or(duplicate_email))?;
    audit::record(
        conn,
        Some(meta),
        Some(user.id),
        actions::OAUTH_SIGN_UP,
        Some(user.id),
        details,
    )
    .await?;
    Ok(user)
}

fn duplicate_email() -> AppError {
    AppError::Conflict("an account with this email already exists: sign in instead".into())
}

/// Signs in with email and password. Every failure is the same error, and an unknown email
/// costs the same bcrypt work as a wrong password.
pub async fn login(
    state: &AppState,
    meta: &RequestMeta,
    email: &str,
    password: SecretString,
) -> AppResult<AuthTokens> {
    let email = Email::parse("email", email)?;
    if password.expose_secret().is_empty() {
        return Err(AppError::bad_input("password", "must not be empty"));
    }
    state
        .limiters
        .check_sign_in(meta.ip, Some(email.as_str()))?;
    let mut conn = state.pool.get().await?;
    let user = model::find_user_by_email(&mut conn, email.as_str()).await?;
    let stored = user.as_ref().and_then(|u| u.password_hash.as_deref());
    let verified = state.passwords.verify(&password, stored).await?;
    let user = match user {
        Some(user) if verified => user,
        _ => {
            return Err(AppError::Unauthenticated(
                "invalid email or password".into(),
            ));
        }
    };
    if user.status != UserStatus::Active {
        return Err(AppError::Unauthenticated(
            "this account is suspended".into(),
        ));
    }
    sessions::start(state, &mut conn, user, meta).await
}

/// How recent a sign-in must be to set a first password on a provider-only account.
const FIRST_PASSWORD_SIGN_IN_WINDOW: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// Changes (or, for accounts without one, sets) the viewer's password. Every session of the
/// user ends, and a new one is returned for the caller.
pub async fn change_password(
    state: &AppState,
    meta: &RequestMeta,
    viewer: &Viewer,
    current: SecretString,
    new: SecretString,
) -> AppResult<AuthTokens> {
    let user = &viewer.user;
    state.limiters.check_sign_in(meta.ip, Some(&user.email))?;
    if user.password_hash.is_none() {
        // A first password makes a provider-only account reachable without the provider: a
        // stolen access token must not be enough, so the sign-in itself must be recent.
        let mut conn = state.pool.get().await?;
        let started = model::session_started_at(&mut conn, viewer.session_id).await?;
        let recent = chrono::Utc::now() - FIRST_PASSWORD_SIGN_IN_WINDOW;
        if started.is_none_or(|at| at <= recent) {
            return Err(AppError::Forbidden(format!(
                "setting a first password needs a recent sign-in: sign in with your provider \
                 again and set it within {} minutes",
                FIRST_PASSWORD_SIGN_IN_WINDOW.num_minutes()
            )));
        }
    }
    if let Some(stored) = &user.password_hash {
        if current.expose_secret().is_empty() {
            return Err(AppError::bad_input("currentPassword", "must not be empty"));
        }
        if !state.passwords.verify(&current, Some(stored)).await? {
            return Err(AppError::bad_input(
                "currentPassword",
                "is not your current password",
            ));
        }
        if current.expose_secret() == new.expose_secret() {
            return Err(AppError::bad_input(
                "newPassword",
                "must differ from the current password",
            ));
        }
    }
    password::check_policy("newPassword", &new, &[&user.email, &user.display_name])?;
    let hash = state.passwords.hash(&new).await?;
    let mut conn = state.pool.get().await?;
    let user_id = user.id;
    let first_password = user.password_hash.is_none();
    let tokens = conn
        .transaction::<_, AppError, _>(async move |conn| {
            let user: UserRow = diesel::update(users::table.find(user_id))
                .set((
                    users::password_hash.eq(&hash),
                    users::updated_at.eq(diesel::dsl::now),
                ))
                .returning(UserRow::as_returning())
                .get_result(conn)
                .await?;
            let revoked =
                model::revoke_user_sessions(conn, user_id, None, "password change").await?;
            let details =
                json!({ "revokedSessions": revoked.len(), "firstPassword": first_password });
            audit::record(
                conn,
                Some(meta),
                Some(user_id),
                actions::PASSWORD_CHANGE,
                Some(user_id),
                details,
            )
            .await?;
            sessions::start(state, conn, user, meta).await
        })
        .await?;
    state.revoke(Revocation::User(user_id));
    Ok(tokens)
}

/// Updates the viewer's profile; fields left out stay as they are.
pub async fn update_profile(
    state: &AppState,
    viewer: &Viewer,
    display_name: Option<String>,
) -> AppResult<UserRow> {
    let Some(raw) = display_name else {
        return Ok(viewer.user.clone());
    };
    let display_name = validate::display_name("displayName", &raw)?;
    let mut conn = state.pool.get().await?;
    let user = diesel::update(users::table.find(viewer.id()))
        .set((
            users::display_name.eq(&display_name),
            users::updated_at.eq(diesel::dsl::now),
        ))
        .returning(UserRow::as_returning())
        .get_result(&mut conn)
        .await?;
    // Cached copies of the row (this server's and others') now show the old name.
    state.revoke(Revocation::Changed(user.id));
    Ok(user)
}
