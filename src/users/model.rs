//! Rows of `users`, `sessions`, `retired_refresh_tokens` and `audit_log`, and the queries on them.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::{audit_log, retired_refresh_tokens, sessions, users};

crate::text_enum! {
    // Declared in rank order, so roles compare: `User < Admin < Owner`.
    /// What a user may do: USER < ADMIN < OWNER.
    pub enum Role {
        /// Manages their own keys, agents and runs.
        User => "USER",
        /// Also manages users (suspend, reactivate) and reads the audit log.
        Admin => "ADMIN",
        /// Also changes roles.
        Owner => "OWNER",
    }
}

crate::text_enum! {
    /// Whether a user may sign in.
    pub enum UserStatus {
        /// May sign in.
        Active => "ACTIVE",
        /// Every session ended; sign-in refused until reactivated.
        Suspended => "SUSPENDED",
    }
}

/// A row of `users`.
#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = users, check_for_backend(diesel::pg::Pg))]
pub struct UserRow {
    /// Primary key (UUIDv7).
    pub id: Uuid,
    /// Lower-cased email.
    pub email: String,
    /// Name shown in the UI.
    pub display_name: String,
    /// bcrypt hash; `None` until an OAuth-created user sets a password.
    pub password_hash: Option<String>,
    /// What the user may do.
    pub role: Role,
    /// Whether the user may sign in.
    pub status: UserStatus,
    /// Why the user was suspended.
    pub suspended_reason: Option<String>,
    /// Sign-up time.
    pub created_at: DateTime<Utc>,
    /// Last change of the row.
    pub updated_at: DateTime<Utc>,
    /// Last successful sign-in.
    pub last_login_at: Option<DateTime<Utc>>,
}

/// A new row of `users`.
#[derive(Debug, Insertable)]
#[diesel(table_name = users)]
pub struct NewUser<'a> {
    /// Primary key (UUIDv7).
    pub id: Uuid,
    /// Lower-cased email.
    pub email: &'a str,
    /// Name shown in the UI.
    pub display_name: &'a str,
    /// bcrypt hash, if the user has a password.
    pub password_hash: Option<&'a str>,
    /// Initial role.
    pub role: Role,
}

/// A row of `sessions`: one refresh-token family.
#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = sessions, check_for_backend(diesel::pg::Pg))]
pub struct SessionRow {
    /// Primary key; the `sid` claim of access tokens.
    pub id: Uuid,
    /// Owner of the session.
    pub user_id: Uuid,
    /// SHA-256 of the current refresh token.
    pub refresh_token_hash: Vec<u8>,
    /// Sign-in time.
    pub created_at: DateTime<Utc>,
    /// Last refresh.
    pub last_used_at: DateTime<Utc>,
    /// Absolute end of the family.
    pub expires_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Why it was revoked.
    pub revoked_reason: Option<String>,
    /// Client that signed in.
    pub user_agent: Option<String>,
    /// Address that signed in.
    pub ip: Option<String>,
}

/// A new row of `sessions`.
#[derive(Debug, Insertable)]
#[diesel(table_name = sessions)]
pub struct NewSession<'a> {
    /// Primary key (UUIDv7).
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// SHA-256 of the first refresh token.
    pub refresh_token_hash: &'a [u8],
    /// Absolute end of the family.
    pub expires_at: DateTime<Utc>,
    /// Client that signed in.
    pub user_agent: Option<&'a str>,
    /// Address that signed in.
    pub ip: Option<&'a str>,
}

/// A row of `audit_log`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = audit_log, check_for_backend(diesel::pg::Pg))]
pub struct AuditRow {
    /// Primary key (UUIDv7, so ordering by id is ordering by time).
    pub id: Uuid,
    /// Who acted; `None` for anonymous events or deleted users.
    pub actor_id: Option<Uuid>,
    /// What happened, e.g. `user.suspend`.
    pub action: String,
    /// Whom it concerned.
    pub target_user_id: Option<Uuid>,
    /// Details of the event (never secrets).
    pub details: serde_json::Value,
    /// The request it happened in.
    pub request_id: Option<String>,
    /// The client address.
    pub ip: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// Loads a user by id.
pub async fn find_user(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<UserRow>> {
    users::table
        .find(id)
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Loads a user by (normalised) email.
pub async fn find_user_by_email(
    conn: &mut AsyncPgConnection,
    email: &str,
) -> QueryResult<Option<UserRow>> {
    users::table
        .filter(users::email.eq(email))
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The one authentication query: the user of a live session, if the session is neither
/// revoked nor expired and the user is active.
pub async fn find_active_session_user(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    user_id: Uuid,
) -> QueryResult<Option<UserRow>> {
    sessions::table
        .inner_join(users::table)
        .filter(sessions::id.eq(session_id))
        .filter(sessions::user_id.eq(user_id))
        .filter(sessions::revoked_at.is_null())
        .filter(sessions::expires_at.gt(diesel::dsl::now))
        .filter(users::status.eq(UserStatus::Active))
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Revokes every live session of `user_id` except `keep`; returns the revoked ids.
pub async fn revoke_user_sessions(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    keep: Option<Uuid>,
    reason: &str,
) -> QueryResult<Vec<Uuid>> {
    let mut query = diesel::update(sessions::table)
        .filter(sessions::user_id.eq(user_id))
        .filter(sessions::revoked_at.is_null())
        .into_boxed();
    if let Some(keep) = keep {
        query = query.filter(sessions::id.ne(keep));
    }
    query
        .set((
            sessions::revoked_at.eq(diesel::dsl::now),
            sessions::revoked_reason.eq(reason),
        ))
        .returning(sessions::id)
        .get_results(conn)
        .await
}

/// Revokes one session; returns whether it was live.
pub async fn revoke_session(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    reason: &str,
) -> QueryResult<bool> {
    let n = diesel::update(sessions::table.find(session_id))
        .filter(sessions::revoked_at.is_null())
        .set((
            sessions::revoked_at.eq(diesel::dsl::now),
            sessions::revoked_reason.eq(reason),
        ))
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// Replaces the current refresh token of a live session, but only if `old_hash` is still the
/// current one (compare-and-swap: of two concurrent refreshes with one token, one wins).
/// The old hash is kept in `retired_refresh_tokens` so a later replay is recognised.
pub async fn rotate_refresh_token(
    conn: &mut AsyncPgConnection,
    old_hash: &[u8],
    new_hash: &[u8],
) -> QueryResult<Option<SessionRow>> {
    use diesel_async::AsyncConnection;
    let (old, new) = (old_hash.to_vec(), new_hash.to_vec());
    conn.transaction(async move |conn| {
        let session: Option<SessionRow> = diesel::update(sessions::table)
            .filter(sessions::refresh_token_hash.eq(&old))
            .filter(sessions::revoked_at.is_null())
            .filter(sessions::expires_at.gt(diesel::dsl::now))
            .set((
                sessions::refresh_token_hash.eq(&new),
                sessions::last_used_at.eq(diesel::dsl::now),
            ))
            .returning(SessionRow::as_returning())
            .get_result(conn)
            .await
            .optional()?;
        if let Some(session) = &session {
            diesel::insert_into(retired_refresh_tokens::table)
                .values((
                    retired_refresh_tokens::token_hash.eq(&old),
                    retired_refresh_tokens::session_id.eq(session.id),
                ))
                .on_conflict_do_nothing()
                .execute(conn)
                .await?;
        }
        Ok(session)
    })
    .await
}

/// When a session (a sign-in; refresh rotation keeps it) began.
pub async fn session_started_at(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
) -> QueryResult<Option<DateTime<Utc>>> {
    sessions::table
        .find(session_id)
        .select(sessions::created_at)
        .first(conn)
        .await
        .optional()
}

/// The session a refresh token belonged to, if it is current or was retired by rotation.
pub async fn find_session_by_token(
    conn: &mut AsyncPgConnection,
    token_hash: &[u8],
) -> QueryResult<Option<(SessionRow, bool)>> {
    let current = sessions::table
        .filter(sessions::refresh_token_hash.eq(token_hash))
        .select(SessionRow::as_select())
        .first(conn)
        .await
        .optional()?;
    if let Some(session) = current {
        return Ok(Some((session, true)));
    }
    let retired = retired_refresh_tokens::table
        .inner_join(sessions::table)
        .filter(retired_refresh_tokens::token_hash.eq(token_hash))
        .select(SessionRow::as_select())
        .first(conn)
        .await
        .optional()?;
    Ok(retired.map(|s| (s, false)))
}

/// Appends an audit row.
pub async fn insert_audit(conn: &mut AsyncPgConnection, row: &AuditRow) -> QueryResult<()> {
    diesel::insert_into(audit_log::table)
        .values(row)
        .execute(conn)
        .await
        .map(|_| ())
}
