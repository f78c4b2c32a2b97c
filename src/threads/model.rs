//! Rows of `threads` and the queries on them, always scoped by owner.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::threads;

/// A row of `threads`.
#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = threads, check_for_backend(diesel::pg::Pg))]
pub struct ThreadRow {
    /// Primary key (UUIDv7).
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// The agent the conversation is with.
    pub agent_id: Uuid,
    /// Title: given, or the first message's beginning.
    pub title: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// The last run's start (or the creation).
    pub last_activity_at: DateTime<Utc>,
}

crate::owned_queries!(threads, ThreadRow);

/// A page of a user's threads, newest activity first, after the cursor `(activity, id)`.
pub async fn page_owned(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    agent_id: Option<Uuid>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> QueryResult<Vec<ThreadRow>> {
    let mut query = threads::table
        .filter(threads::user_id.eq(user_id))
        .order((threads::last_activity_at.desc(), threads::id.desc()))
        .limit(limit)
        .select(ThreadRow::as_select())
        .into_boxed();
    if let Some(agent_id) = agent_id {
        query = query.filter(threads::agent_id.eq(agent_id));
    }
    if let Some((at, id)) = after {
        query = query.filter(
            threads::last_activity_at
                .lt(at)
                .or(threads::last_activity_at.eq(at).and(threads::id.lt(id))),
        );
    }
    query.load(conn).await
}
