//! Thread rules: a thread is the viewer's, with one of their agents; titles are bounded (a
//! thread without one takes its first message's beginning); a thread with a run in progress
//! takes no other run and cannot be deleted (CONFLICT); another user's thread is NOT_FOUND.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::{
    agents,
    db::schema::{executions, threads},
    error::{AppError, AppResult},
    executions::model::ExecutionStatus,
    request::Viewer,
    state::AppState,
    threads::model::{self, ThreadRow},
};

/// Longest title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Characters of the first message a thread without a title takes as its title.
const TITLE_FROM_MESSAGE_CHARS: usize = 80;

fn not_found() -> AppError {
    AppError::NotFound { what: "thread" }
}

/// A title as given: trimmed, without control characters, at most [`MAX_TITLE_CHARS`].
fn title(field: &str, raw: &str) -> AppResult<String> {
    let title = raw.trim();
    if title.chars().any(char::is_control) {
        return Err(AppError::bad_input(
            field,
            "must not contain control characters",
        ));
    }
    let chars = title.chars().count();
    if chars > MAX_TITLE_CHARS {
        return Err(AppError::bad_input(
            field,
            format!("must be at most {MAX_TITLE_CHARS} characters (got {chars})"),
        ));
    }
    Ok(title.to_owned())
}

/// The title a first message gives a thread: its first line's beginning.
pub fn title_from_message(input: &str) -> String {
    let line = input
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim();
    let mut out: String = line.chars().take(TITLE_FROM_MESSAGE_CHARS).collect();
    if line.chars().count() > TITLE_FROM_MESSAGE_CHARS {
        out.push('…');
    }
    out
}

/// Starts a thread with one of the viewer's agents.
pub async fn create(
    state: &AppState,
    viewer: &Viewer,
    agent_id: Uuid,
    raw_title: Option<&str>,
) -> AppResult<ThreadRow> {
    let title = raw_title
        .map(|t| title("title", t))
        .transpose()?
        .unwrap_or_default();
    let mut conn = state.pool.get().await?;
    agents::model::find_owned(&mut conn, viewer.id(), agent_id)
        .await?
        .ok_or_else(|| AppError::bad_input("agentId", "no agent of yours has this id"))?;
    Ok(diesel::insert_into(threads::table)
        .values((
            threads::id.eq(Uuid::now_v7()),
            threads::user_id.eq(viewer.id()),
            threads::agent_id.eq(agent_id),
            threads::title.eq(title),
        ))
        .returning(ThreadRow::as_returning())
        .get_result(&mut conn)
        .await?)
}

/// A page of the viewer's threads, newest activity first.
pub async fn page(
    state: &AppState,
    viewer: &Viewer,
    agent_id: Option<Uuid>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> AppResult<Vec<ThreadRow>> {
    let mut conn = state.pool.get().await?;
    Ok(model::page_owned(&mut conn, viewer.id(), agent_id, after, limit).await?)
}

/// One of the viewer's threads.
pub async fn get(state: &AppState, viewer: &Viewer, id: Uuid) -> AppResult<ThreadRow> {
    let mut conn = state.pool.get().await?;
    model::find_owned(&mut conn, viewer.id(), id)
        .await?
        .ok_or_else(not_found)
}

/// Renames one of the viewer's threads.
pub async fn rename(
    state: &AppState,
    viewer: &Viewer,
    id: Uuid,
    raw_title: &str,
) -> AppResult<ThreadRow> {
    let title = title("title", raw_title)?;
    if title.is_empty() {
        return Err(AppError::bad_input("title", "must not be empty"));
    }
    let mut conn = state.pool.get().await?;
    diesel::update(threads::table.find(id))
        .filter(threads::user_id.eq(viewer.id()))
        .set(threads::title.eq(title))
        .returning(ThreadRow::as_returning())
        .get_result(&mut conn)
        .await
        .optional()?
        .ok_or_else(not_found)
}

/// Deletes one of the viewer's threads; its runs stay in the history, unlinked.
pub async fn delete(state: &AppState, viewer: &Viewer, id: Uuid) -> AppResult<bool> {
    let user_id = viewer.id();
    let mut conn = state.pool.get().await?;
    conn.transaction::<_, AppError, _>(async |conn| {
        // The lock a run start takes: no run can join the thread between the check and the
        // delete.
        crate::executions::service::lock_user(conn, user_id).await?;
        model::find_owned(conn, user_id, id)
            .await?
            .ok_or_else(not_found)?;
        if unfinished_in(conn, id).await? > 0 {
            return Err(AppError::Conflict(
                "the thread has a run in progress: wait for it or cancel it first".into(),
            ));
        }
        diesel::delete(threads::table.find(id))
            .filter(threads::user_id.eq(user_id))
            .execute(conn)
            .await?;
        Ok(true)
    })
    .await
}

/// Runs of the thread that have not ended.
pub async fn unfinished_in(conn: &mut AsyncPgConnection, thread_id: Uuid) -> QueryResult<i64> {
    executions::table
        .filter(executions::thread_id.eq(thread_id))
        .filter(executions::status.eq_any(ExecutionStatus::UNFINISHED))
        .count()
        .get_result(conn)
        .await
}

/// Checks that a run of `agent_id` may join the viewer's thread `thread_id` (inside the run's
/// start transaction, which holds the user's lock): it exists, is theirs, is with that agent,
/// and has no run in progress. Marks the activity and, for a first message, the title.
pub async fn admit_run(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    thread_id: Uuid,
    agent_id: Uuid,
    input: &str,
) -> AppResult<()> {
    let thread = model::find_owned(conn, user_id, thread_id)
        .await?
        .ok_or_else(|| AppError::bad_input("threadId", "no thread of yours has this id"))?;
    if thread.agent_id != agent_id {
        return Err(AppError::bad_input(
            "threadId",
            "the thread is with another agent: run that agent, or start a thread with this one",
        ));
    }
    if unfinished_in(conn, thread_id).await? > 0 {
        return Err(AppError::Conflict(
            "the thread has a run in progress: wait for it to finish (or cancel it) first".into(),
        ));
    }
    let title = if thread.title.is_empty() {
        title_from_message(input)
    } else {
        thread.title
    };
    diesel::update(threads::table.find(thread_id))
        .set((
            threads::last_activity_at.eq(diesel::dsl::now),
            threads::title.eq(title),
        ))
        .execute(conn)
        .await?;
    Ok(())
}
