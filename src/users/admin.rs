//! Admin rules: listing users, suspension, roles, and the first owner.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use secrecy::SecretString;
use serde_json::json;
use uuid::Uuid;

use crate::{
    crypto::password,
    db::schema::users,
    error::{AppError, AppResult},
    request::{RequestMeta, Viewer},
    state::{AppState, Revocation},
    users::{
        audit::{self, actions},
        model::{self, NewUser, Role, UserRow, UserStatus},
        validate::{self, Email},
    },
};

/// A page of users for an admin (the `users` query): newest first, after the cursor id
/// `before`, optionally filtered by a case-insensitive substring of the email.
pub async fn users_page(
    state: &AppState,
    search: Option<&str>,
    before: Option<Uuid>,
    limit: i64,
) -> AppResult<Vec<UserRow>> {
    let mut conn = state.pool.get().await?;
    list_users(&mut conn, search, before, limit).await
}

/// Any user by id, for an admin (`None` when there is none).
pub async fn find_user(state: &AppState, id: Uuid) -> AppResult<Option<UserRow>> {
    let mut conn = state.pool.get().await?;
    Ok(model::find_user(&mut conn, id).await?)
}

/// A page of the audit log for an admin, newest first, after the cursor id `before`.
pub async fn audit_page(
    state: &AppState,
    before: Option<Uuid>,
    limit: i64,
) -> AppResult<Vec<crate::users::model::AuditRow>> {
    let mut conn = state.pool.get().await?;
    Ok(audit::page(&mut conn, before, limit).await?)
}

/// A page of users, newest first, after the cursor id `before`, optionally filtered by a
/// case-insensitive substring of the email.
async fn list_users(
    conn: &mut AsyncPgConnection,
    search: Option<&str>,
    before: Option<Uuid>,
    limit: i64,
) -> AppResult<Vec<UserRow>> {
    let mut query = users::table
        .select(UserRow::as_select())
        .order(users::id.desc())
        .limit(limit)
        .into_boxed();
    if let Some(before) = before {
        query = query.filter(users::id.lt(before));
    }
    if let Some(term) = search.map(str::trim).filter(|t| !t.is_empty()) {
        if term.chars().count() > 254 {
            return Err(AppError::bad_input(
                "search",
                "must be at most 254 characters",
            ));
        }
        query =
            query.filter(users::email.ilike(format!("%{}%", escape_like(&term.to_lowercase()))));
    }
    Ok(query.load(conn).await?)
}

/// Escapes LIKE wildcards so a search for `a_b` finds exactly `a_b`.
fn escape_like(term: &str) -> String {
    term.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// Loads a user or `NOT_FOUND`.
pub async fn get_user(conn: &mut AsyncPgConnection, id: Uuid) -> AppResult<UserRow> {
    model::find_user(conn, id)
        .await?
        .ok_or(AppError::NotFound { what: "user" })
}

/// Suspends a user: every session ends at once. Admins cannot suspend owners; nobody can
/// suspend themselves. Suspending a suspended user changes nothing.
pub async fn suspend(
    state: &AppState,
    meta: &RequestMeta,
    actor: &Viewer,
    target: Uuid,
    reason: &str,
) -> AppResult<UserRow> {
    let reason = validate::reason("reason", reason)?;
    let mut conn = state.pool.get().await?;
    let user = get_user(&mut conn, target).await?;
    if user.id == actor.id() {
        return Err(AppError::bad_input("userId", "you cannot suspend yourself"));
    }
    // Nobody acts on someone above them: an admin cannot suspend an owner.
    if user.role > actor.user.role {
        return Err(AppError::Forbidden(format!(
            "a {} cannot suspend an {}",
            actor.user.role.as_str().to_lowercase(),
            user.role.as_str().to_lowercase()
        )));
    }
    if user.status == UserStatus::Suspended {
        return Ok(user);
    }
    let actor_id = actor.id();
    let user = conn
        .transaction::<_, AppError, _>(async move |conn| {
            let user: UserRow = diesel::update(users::table.find(target))
                .set((
                    users::status.eq(UserStatus::Suspended),
                    users::suspended_reason.eq(&reason),
                    users::updated_at.eq(diesel::dsl::now),
                ))
                .returning(UserRow::as_returning())
                .get_result(conn)
                .await?;
            let revoked = model::revoke_user_sessions(conn, target, None, "suspended").await?;
            let details = json!({ "reason": reason, "revokedSessions": revoked.len() });
            audit::record(
                conn,
                Some(meta),
                Some(actor_id),
                actions::USER_SUSPEND,
                Some(target),
                details,
            )
            .await?;
            Ok(user)
        })
        .await?;
    state.revoke(Revocation::User(target));
    Ok(user)
}

/// Lifts a suspension. The user signs in again (their old sessions stay revoked).
pub async fn reactivate(
    state: &AppState,
    meta: &RequestMeta,
    actor: &Viewer,
    target: Uuid,
) -> AppResult<UserRow> {
    let mut conn = state.pool.get().await?;
    let user = get_user(&mut conn, target).await?;
    if user.role == Role::Owner && actor.user.role != Role::Owner {
        return Err(AppError::Forbidden(
            "an admin cannot reactivate an owner".into(),
        ));
    }
    if user.status == UserStatus::Active {
        return Ok(user);
    }
    let actor_id = actor.id();
    conn.transaction::<_, AppError, _>(async move |conn| {
        let user: UserRow = diesel::update(users::table.find(target))
            .set((
                users::status.eq(UserStatus::Active),
                users::suspended_reason.eq(None::<String>),
                users::updated_at.eq(diesel::dsl::now),
            ))
            .returning(UserRow::as_returning())
            .get_result(conn)
            .await?;
        audit::record(
            conn,
            Some(meta),
            Some(actor_id),
            actions::USER_REACTIVATE,
            Some(target),
            json!({}),
        )
        .await?;
        Ok(user)
    })
    .await
}

/// Changes a user's role (owners only). The last owner cannot be demoted: owners are locked
/// while counted, so two concurrent demotions cannot both pass.
pub async fn set_role(
    state: &AppState,
    meta: &RequestMeta,
    actor: &Viewer,
    target: Uuid,
    role: Role,
) -> AppResult<UserRow> {
    let mut conn = state.pool.get().await?;
    let actor_id = actor.id();
    let (user, changed) = conn
        .transaction::<_, AppError, _>(async move |conn| {
            let owners: Vec<Uuid> = users::table
                .filter(users::role.eq(Role::Owner))
                .select(users::id)
                .for_update()
                .load(conn)
                .await?;
            let user = get_user(conn, target).await?;
            if user.role == role {
                return Ok((user, false));
            }
            if user.role == Role::Owner && owners.len() <= 1 {
                return Err(AppError::Conflict(
                    "the last owner cannot be demoted: make someone else an owner first".into(),
                ));
            }
            let from = user.role;
            let user: UserRow = diesel::update(users::table.find(target))
                .set((users::role.eq(role), users::updated_at.eq(diesel::dsl::now)))
                .returning(UserRow::as_returning())
                .get_result(conn)
                .await?;
            audit::record(
                conn,
                Some(meta),
                Some(actor_id),
                actions::ROLE_CHANGE,
                Some(target),
                json!({ "from": from.as_str(), "to": role.as_str() }),
            )
            .await?;
            Ok((user, true))
        })
        .await?;
    if changed {
        // Requests read the role from the database, so HTTP sees the change at once; open
        // WebSockets captured the old role at `connection_init` and must reconnect.
        state.revoke(Revocation::User(target));
    }
    Ok(user)
}

/// Creates an owner account (the `create-owner` command). An account that already has the
/// email is promoted only when `promote_existing` is set and `password` is that account's own
/// (someone may have registered the email first); its sessions are then signed out, so nobody
/// holding one of them becomes owner. Returns the user and whether it was created.
pub async fn create_owner(
    state: &AppState,
    email: &str,
    password: SecretString,
    display_name: Option<&str>,
    promote_existing: bool,
) -> AppResult<(UserRow, bool)> {
    let email = Email::parse("email", email)?;
    let display_name = match display_name {
        Some(name) => validate::display_name("displayName", name)?,
        None => email
            .as_str()
            .split('@')
            .next()
            .unwrap_or("Owner")
            .to_owned(),
    };
    let mut conn = state.pool.get().await?;
    if let Some(existing) = model::find_user_by_email(&mut conn, email.as_str()).await? {
        if !promote_existing {
            return Err(AppError::Conflict(format!(
                "an account with {} already exists: to make it the owner, run again with \
                 --promote-existing and that account's password",
                email.as_str()
            )));
        }
        if !state
            .passwords
            .verify(&password, existing.password_hash.as_deref())
            .await?
        {
            return Err(AppError::bad_input(
                "password",
                "is not this account's password (an account without a password cannot be promoted this way)",
            ));
        }
        model::revoke_user_sessions(&mut conn, existing.id, None, "promoted to owner").await?;
        state.revoke(Revocation::User(existing.id));
        let user: UserRow = diesel::update(users::table.find(existing.id))
            .set((
                users::role.eq(Role::Owner),
                users::updated_at.eq(diesel::dsl::now),
            ))
            .returning(UserRow::as_returning())
            .get_result(&mut conn)
            .await?;
        audit::record(
            &mut conn,
            None,
            None,
            actions::OWNER_CREATE,
            Some(user.id),
            json!({ "promoted": true }),
        )
        .await?;
        return Ok((user, false));
    }
    password::check_policy("password", &password, &[email.as_str(), &display_name])?;
    let hash = state.passwords.hash(&password).await?;
    let user: UserRow = diesel::insert_into(users::table)
        .values(NewUser {
            id: Uuid::now_v7(),
            email: email.as_str(),
            display_name: &display_name,
            password_hash: Some(&hash),
            role: Role::Owner,
        })
        .returning(UserRow::as_returning())
        .get_result(&mut conn)
        .await?;
    audit::record(
        &mut conn,
        None,
        None,
        actions::OWNER_CREATE,
        Some(user.id),
        json!({ "promoted": false }),
    )
    .await?;
    Ok((user, true))
}
