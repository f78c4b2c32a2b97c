//! The audit log: who did what to whom, when, under which request id.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::{
    db::schema::audit_log,
    request::RequestMeta,
    users::model::{AuditRow, insert_audit},
};

/// Audit actions, as stored in `audit_log.action`.
pub mod actions {
    /// A user signed up with a password.
    pub const USER_REGISTER: &str = "user.register";
    /// A user changed (or first set) their password.
    pub const PASSWORD_CHANGE: &str = "user.password_change";
    /// An admin suspended a user.
    pub const USER_SUSPEND: &str = "user.suspend";
    /// An admin reactivated a user.
    pub const USER_REACTIVATE: &str = "user.reactivate";
    /// An owner changed a user's role.
    pub const ROLE_CHANGE: &str = "user.role_change";
    /// An owner account was created from the command line.
    pub const OWNER_CREATE: &str = "user.create_owner";
    /// A user signed up through an OAuth provider (no password).
    pub const OAUTH_SIGN_UP: &str = "user.register_oauth";
    /// A user linked an OAuth provider account.
    pub const OAUTH_LINK: &str = "oauth.link";
    /// A user unlinked an OAuth provider account.
    pub const OAUTH_UNLINK: &str = "oauth.unlink";
    /// A rotated-away refresh token was presented again; its family was revoked.
    pub const REFRESH_TOKEN_REUSE: &str = "session.refresh_token_reuse";
    /// An admin set a user's spend ceiling.
    pub const CEILING_SET: &str = "budget.ceiling_set";
    /// An admin removed a user's spend ceiling.
    pub const CEILING_REMOVE: &str = "budget.ceiling_remove";
}

/// Appends one audit row.
pub async fn record(
    conn: &mut AsyncPgConnection,
    meta: Option<&RequestMeta>,
    actor: Option<Uuid>,
    action: &str,
    target: Option<Uuid>,
    details: serde_json::Value,
) -> QueryResult<()> {
    insert_audit(
        conn,
        &AuditRow {
            id: Uuid::now_v7(),
            actor_id: actor,
            action: action.to_owned(),
            target_user_id: target,
            details,
            request_id: meta.map(|m| m.request_id.clone()),
            ip: meta.map(|m| m.ip.to_string()),
            created_at: chrono::Utc::now(),
        },
    )
    .await
}

/// A page of the audit log, newest first, starting after the cursor id `before`.
pub async fn page(
    conn: &mut AsyncPgConnection,
    before: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<AuditRow>> {
    let mut query = audit_log::table
        .select(AuditRow::as_select())
        .order(audit_log::id.desc())
        .limit(limit)
        .into_boxed();
    if let Some(before) = before {
        query = query.filter(audit_log::id.lt(before));
    }
    query.load(conn).await
}
