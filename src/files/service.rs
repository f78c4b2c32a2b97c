//! File workspace rules: every upload (or file a run writes) is checked on the way in — a safe
//! name unique per user, a size cap, a count and a total quota per user, a kind judged by the
//! content and agreeing with the name — and stored with its SHA-256; reads are scoped by owner
//! (another user's file is NOT_FOUND).

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{
    config::Config,
    db::{Pool, schema::files},
    error::{AppError, AppResult},
    files::{
        content,
        model::{self, FileRow, NewFile},
    },
};

fn not_found() -> AppError {
    AppError::NotFound { what: "file" }
}

/// Checks and stores `bytes` as `raw_name` for `user_id` (written by the run `execution_id`,
/// if any). Errors are `BAD_USER_INPUT` on `field`, saying which rule failed.
pub async fn store(
    pool: &Pool,
    config: &Config,
    user_id: Uuid,
    execution_id: Option<Uuid>,
    field: &str,
    raw_name: &str,
    bytes: &[u8],
) -> AppResult<FileRow> {
    let bad = |rule: String| AppError::bad_input(field, rule);
    let name = content::sanitize(raw_name).ok_or_else(|| {
        bad("the file name is empty once paths and control characters are removed".into())
    })?;
    if bytes.is_empty() {
        return Err(bad("the file is empty".into()));
    }
    let max = config.file_max_bytes;
    if bytes.len() > max {
        return Err(bad(format!(
            "a file may be at most {max} bytes (AGENTRY_FILE_MAX_BYTES); this one has {}",
            bytes.len()
        )));
    }
    let kind = content::check(&name, bytes).map_err(bad)?;
    let size = i32::try_from(bytes.len()).map_err(|_| bad("the file is too large".into()))?;
    let sha256 = hex::encode(Sha256::digest(bytes));
    let media_type = kind.media_type(&name);
    let (max_files, max_total) = (config.files_max_per_user, config.files_max_total_bytes);
    let mut conn = pool.get().await?;
    let stored = conn
        .transaction::<_, AppError, _>(async |conn| {
            // One upload at a time per user, so two cannot both pass the quota.
            crate::db::schema::users::table
                .find(user_id)
                .select(crate::db::schema::users::id)
                .for_update()
                .first::<Uuid>(conn)
                .await?;
            if model::name_taken(conn, user_id, &name, None).await? {
                return Err(bad(format!(
                    "you already have a file named `{name}`: delete it first or use another name"
                )));
            }
            let (count, total) = model::usage(conn, user_id).await?;
            if count >= i64::try_from(max_files).unwrap_or(i64::MAX) {
                return Err(bad(format!(
                    "you have {count} files, the most allowed (AGENTRY_FILES_MAX_PER_USER): \
                     delete some first"
                )));
            }
            let total_max = i64::try_from(max_total).unwrap_or(i64::MAX);
            if total + i64::from(size) > total_max {
                return Err(bad(format!(
                    "your files would take {} bytes, more than your quota of {total_max} \
                     (AGENTRY_FILES_MAX_TOTAL_BYTES): delete some first",
                    total + i64::from(size)
                )));
            }
            let row = diesel::insert_into(files::table)
                .values(NewFile {
                    id: Uuid::now_v7(),
                    user_id,
                    execution_id,
                    name: &name,
                    content_type: media_type,
                    size,
                    sha256: &sha256,
                    content: bytes,
                })
                .returning(FileRow::as_returning())
                .get_result(conn)
                .await?;
            Ok(row)
        })
        .await?;
    Ok(stored)
}

/// A page of the user's files, newest first.
pub async fn page(
    pool: &Pool,
    user_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> AppResult<Vec<FileRow>> {
    let mut conn = pool.get().await?;
    Ok(model::page_owned(&mut conn, user_id, after, limit).await?)
}

/// One of the user's files.
pub async fn get(pool: &Pool, user_id: Uuid, id: Uuid) -> AppResult<FileRow> {
    let mut conn = pool.get().await?;
    model::find_owned(&mut conn, user_id, id)
        .await?
        .ok_or_else(not_found)
}

/// One of the user's files by name (case-insensitively), with its content.
pub async fn read_named(pool: &Pool, user_id: Uuid, name: &str) -> AppResult<(FileRow, Vec<u8>)> {
    let mut conn = pool.get().await?;
    model::named_with_content(&mut conn, user_id, name)
        .await?
        .ok_or_else(not_found)
}

/// One of the user's files with its content.
pub async fn download(pool: &Pool, user_id: Uuid, id: Uuid) -> AppResult<(FileRow, Vec<u8>)> {
    let mut conn = pool.get().await?;
    model::with_content_owned(&mut conn, user_id, id)
        .await?
        .ok_or_else(not_found)
}

/// Deletes one of the user's files.
pub async fn delete(pool: &Pool, user_id: Uuid, id: Uuid) -> AppResult<bool> {
    let mut conn = pool.get().await?;
    let n = diesel::delete(files::table.find(id))
        .filter(files::user_id.eq(user_id))
        .execute(&mut conn)
        .await?;
    if n == 0 {
        return Err(not_found());
    }
    Ok(true)
}

/// Files the runs `ids` wrote (any owner: callers have already scoped the ids).
pub async fn of_executions(pool: &Pool, ids: &[Uuid]) -> AppResult<Vec<FileRow>> {
    let mut conn = pool.get().await?;
    Ok(model::of_executions(&mut conn, ids).await?)
}

/// Whether a stored media type is text a model can read.
pub fn is_text(content_type: &str) -> bool {
    content_type.starts_with("text/")
        || matches!(
            content_type,
            "application/json" | "application/yaml" | "application/xml"
        )
}
