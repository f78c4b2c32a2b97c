//! Rows of `api_keys` and the queries on them. Every query is scoped by owner, so another
//! user's key is simply not found.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::api_keys;

/// A row of `api_keys`.
#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = api_keys, check_for_backend(diesel::pg::Pg))]
pub struct ApiKeyRow {
    /// Primary key (UUIDv7).
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// Name, unique per user (case-insensitively).
    pub name: String,
    /// `OPENAI`, `ANTHROPIC`, `HUGGINGFACE`, `CUSTOM`, or a search API: `BRAVE`, `TAVILY`.
    pub provider: String,
    /// Base URL of a CUSTOM (OpenAI-compatible) server.
    pub endpoint: Option<String>,
    /// The vault's stored form of the secret.
    pub secret_ciphertext: Vec<u8>,
    /// `sk-…abcd`.
    pub masked_key: String,
    /// Inactive keys cannot run agents.
    pub is_active: bool,
    /// Last run that used the key.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Last `testApiKey`.
    pub last_tested_at: Option<DateTime<Utc>>,
    /// Outcome of the last test.
    pub last_test_ok: Option<bool>,
    /// Message of the last test.
    pub last_test_message: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A new row of `api_keys`.
#[derive(Debug, Insertable)]
#[diesel(table_name = api_keys)]
pub struct NewApiKey<'a> {
    /// Primary key (UUIDv7), chosen before encrypting: the ciphertext is bound to it.
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// Name.
    pub name: &'a str,
    /// Provider name.
    pub provider: &'a str,
    /// CUSTOM endpoint.
    pub endpoint: Option<&'a str>,
    /// Encrypted secret.
    pub secret_ciphertext: &'a [u8],
    /// Masked form.
    pub masked_key: &'a str,
}

crate::owned_queries!(api_keys, ApiKeyRow, named, activatable);

/// Every key of a user, newest first.
pub async fn list_owned(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
) -> QueryResult<Vec<ApiKeyRow>> {
    api_keys::table
        .filter(api_keys::user_id.eq(user_id))
        .order(api_keys::id.desc())
        .select(ApiKeyRow::as_select())
        .load(conn)
        .await
}

/// How many keys a user has.
pub async fn count_owned(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<i64> {
    api_keys::table
        .filter(api_keys::user_id.eq(user_id))
        .count()
        .get_result(conn)
        .await
}

/// One page of every key (for re-encryption), in id order after `after`.
pub async fn page_all(
    conn: &mut AsyncPgConnection,
    after: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<(Uuid, Uuid, Vec<u8>)>> {
    let mut query = api_keys::table
        .select((api_keys::id, api_keys::user_id, api_keys::secret_ciphertext))
        .order(api_keys::id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(api_keys::id.gt(after));
    }
    query.load(conn).await
}

/// Replaces a ciphertext only if it is still `old` (a concurrent update wins, not us).
pub async fn swap_ciphertext(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    old: &[u8],
    new: &[u8],
) -> QueryResult<bool> {
    let n = diesel::update(api_keys::table.find(id))
        .filter(api_keys::secret_ciphertext.eq(old))
        .set(api_keys::secret_ciphertext.eq(new))
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// Records that key `id` was just used by a run (inside the run's final transaction).
pub async fn mark_used(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<()> {
    diesel::update(api_keys::table.find(id))
        .set(api_keys::last_used_at.eq(diesel::dsl::now))
        .execute(conn)
        .await
        .map(|_| ())
}

/// The keys with these ids (any owner: callers check ownership through the parent object).
pub async fn find_many(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<ApiKeyRow>> {
    api_keys::table
        .filter(api_keys::id.eq_any(ids))
        .select(ApiKeyRow::as_select())
        .load(conn)
        .await
}

/// The owner's newest active key of one of `providers`.
pub async fn newest_active_of(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    providers: &[&str],
) -> QueryResult<Option<ApiKeyRow>> {
    api_keys::table
        .filter(api_keys::user_id.eq(user_id))
        .filter(api_keys::is_active.eq(true))
        .filter(api_keys::provider.eq_any(providers))
        .order(api_keys::id.desc())
        .select(ApiKeyRow::as_select())
        .first(conn)
        .await
        .optional()
}
