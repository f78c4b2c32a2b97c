//! Rows of `files` and the queries on them, always scoped by owner. Listing never reads the
//! content; only a download or a `read_file` does.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::files;

/// A row of `files`, without its content.
#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = files, check_for_backend(diesel::pg::Pg))]
pub struct FileRow {
    /// Primary key (UUIDv7).
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// The run that wrote it (null for uploads).
    pub execution_id: Option<Uuid>,
    /// Safe name, unique per user (case-insensitively).
    pub name: String,
    /// Media type, from the content.
    pub content_type: String,
    /// Bytes.
    pub size: i32,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    /// Upload (or write) time.
    pub created_at: DateTime<Utc>,
}

/// A file to store.
#[derive(Debug, Insertable)]
#[diesel(table_name = files)]
pub struct NewFile<'a> {
    /// New id (UUIDv7).
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// The run writing it, if any.
    pub execution_id: Option<Uuid>,
    /// Safe name.
    pub name: &'a str,
    /// Media type.
    pub content_type: &'a str,
    /// Bytes.
    pub size: i32,
    /// SHA-256, hex.
    pub sha256: &'a str,
    /// The bytes.
    pub content: &'a [u8],
}

crate::owned_queries!(files, FileRow, named);

/// A page of a user's files, newest first, after the cursor id `before`.
pub async fn page_owned(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<FileRow>> {
    let mut query = files::table
        .filter(files::user_id.eq(user_id))
        .order(files::id.desc())
        .limit(limit)
        .select(FileRow::as_select())
        .into_boxed();
    if let Some(before) = before {
        query = query.filter(files::id.lt(before));
    }
    query.load(conn).await
}

/// The owner's file `id` with its content, in one statement.
pub async fn with_content_owned(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    id: Uuid,
) -> QueryResult<Option<(FileRow, Vec<u8>)>> {
    files::table
        .filter(files::id.eq(id))
        .filter(files::user_id.eq(user_id))
        .select((FileRow::as_select(), files::content))
        .first(conn)
        .await
        .optional()
}

/// The owner's file called `name` (case-insensitively) with its content, in one statement.
pub async fn named_with_content(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    name: &str,
) -> QueryResult<Option<(FileRow, Vec<u8>)>> {
    files::table
        .filter(files::user_id.eq(user_id))
        .filter(crate::db::lower(files::name).eq(crate::db::lower(name)))
        .select((FileRow::as_select(), files::content))
        .first(conn)
        .await
        .optional()
}

/// How many files a user has and their total size.
pub async fn usage(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<(i64, i64)> {
    use diesel::dsl::{count_star, sum};
    let (count, total): (i64, Option<i64>) = files::table
        .filter(files::user_id.eq(user_id))
        .select((count_star(), sum(files::size)))
        .first(conn)
        .await?;
    Ok((count, total.unwrap_or(0)))
}

/// Files the runs `ids` wrote, oldest first (for `Execution.files`).
pub async fn of_executions(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> QueryResult<Vec<FileRow>> {
    files::table
        .filter(files::execution_id.eq_any(ids))
        .order(files::id.asc())
        .select(FileRow::as_select())
        .load(conn)
        .await
}
