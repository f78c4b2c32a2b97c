//! Rows of `crews` and `crew_runs` and the queries on them, always scoped by owner (the crew
//! runner and recovery aside).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db::schema::{crew_runs, crews};

crate::text_enum! {
    /// How a crew works through its tasks.
    pub enum CrewProcess {
        /// The tasks in order, each by its agent, each output passed on.
        Sequential => "SEQUENTIAL",
        /// A manager agent delegates the tasks to the members and assembles the answer.
        Hierarchical => "HIERARCHICAL",
    }
}

crate::text_enum! {
    /// Where a crew run is.
    pub enum CrewRunStatus {
        /// Accepted, not started yet.
        Queued => "QUEUED",
        /// Working through its tasks.
        Running => "RUNNING",
        /// Every task done; `output` is the final answer.
        Succeeded => "SUCCEEDED",
        /// A task failed, or the crew could not run (see `error`).
        Failed => "FAILED",
        /// Ended by `cancelCrewRun` (or a task's cancel): the rest was skipped.
        Cancelled => "CANCELLED",
    }
}

impl CrewRunStatus {
    /// States of a crew run that has not ended.
    pub const UNFINISHED: [Self; 2] = [Self::Queued, Self::Running];

    /// Whether the crew run has ended.
    pub fn is_finished(self) -> bool {
        !Self::UNFINISHED.contains(&self)
    }
}

/// One task of a crew, as stored in `crews.tasks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskSpec {
    /// What to do; `{name}` placeholders take the run's inputs.
    pub description: String,
    /// What a good result looks like (told to the agent).
    pub expected_output: String,
    /// Who does it: required in a SEQUENTIAL crew; in a HIERARCHICAL one, a hint to the
    /// manager.
    pub agent_id: Option<Uuid>,
    /// Indexes of earlier tasks whose outputs it receives; `None` means the task just before.
    pub context: Option<Vec<i32>>,
}

impl TaskSpec {
    /// The earlier tasks whose outputs task `index` receives.
    pub fn context_of(&self, index: usize) -> Vec<usize> {
        match &self.context {
            Some(list) => list
                .iter()
                .filter_map(|i| usize::try_from(*i).ok())
                .filter(|i| *i < index)
                .collect(),
            None => index.checked_sub(1).into_iter().collect(),
        }
    }
}

/// A row of `crews`.
#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = crews, check_for_backend(diesel::pg::Pg))]
pub struct CrewRow {
    /// Primary key (UUIDv7).
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// Unique per user, case-insensitively.
    pub name: String,
    /// Free text.
    pub description: String,
    /// How the tasks are worked through.
    pub process: CrewProcess,
    /// The manager of a HIERARCHICAL crew.
    pub manager_agent_id: Option<Uuid>,
    /// The members, in the order given.
    pub agent_ids: Vec<Uuid>,
    /// The tasks, in order (a JSON array of [`TaskSpec`]).
    pub tasks: serde_json::Value,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl CrewRow {
    /// The crew's tasks (an unreadable array, which only a hand edit could make, reads as none).
    pub fn task_list(&self) -> Vec<TaskSpec> {
        serde_json::from_value(self.tasks.clone()).unwrap_or_default()
    }
}

crate::owned_queries!(crews, CrewRow, named);

/// A row of `crew_runs`.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Identifiable)]
#[diesel(table_name = crew_runs, check_for_backend(diesel::pg::Pg))]
pub struct CrewRunRow {
    /// Primary key (UUIDv7).
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// The crew (null once it is deleted).
    pub crew_id: Option<Uuid>,
    /// The crew's name when it ran.
    pub crew_name: String,
    /// The crew's process when it ran.
    pub process: CrewProcess,
    /// The inputs given to `runCrew`.
    pub inputs: serde_json::Value,
    /// Where the crew run is.
    pub status: CrewRunStatus,
    /// The final answer: the last task's output (SEQUENTIAL) or the manager's (HIERARCHICAL).
    pub output: String,
    /// Why it failed.
    pub error: Option<String>,
    /// Whether a cancel was requested.
    pub cancel_requested: bool,
    /// Last sign of life of its coordinator.
    pub heartbeat_at: DateTime<Utc>,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// When its first task started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// The owner's crew run `id`, if it exists and is theirs.
pub async fn find_run_owned(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    id: Uuid,
) -> QueryResult<Option<CrewRunRow>> {
    crew_runs::table
        .filter(crew_runs::id.eq(id))
        .filter(crew_runs::user_id.eq(user_id))
        .select(CrewRunRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// A page of a user's crews, newest first, after the cursor id.
pub async fn page_owned(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<CrewRow>> {
    let mut query = crews::table
        .filter(crews::user_id.eq(user_id))
        .order(crews::id.desc())
        .limit(limit)
        .select(CrewRow::as_select())
        .into_boxed();
    if let Some(before) = before {
        query = query.filter(crews::id.lt(before));
    }
    query.load(conn).await
}

/// A page of a user's crew runs, newest first, optionally of one crew.
pub async fn runs_page_owned(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    crew_id: Option<Uuid>,
    before: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<CrewRunRow>> {
    let mut query = crew_runs::table
        .filter(crew_runs::user_id.eq(user_id))
        .order(crew_runs::id.desc())
        .limit(limit)
        .select(CrewRunRow::as_select())
        .into_boxed();
    if let Some(crew_id) = crew_id {
        query = query.filter(crew_runs::crew_id.eq(crew_id));
    }
    if let Some(before) = before {
        query = query.filter(crew_runs::id.lt(before));
    }
    query.load(conn).await
}

/// The newest `limit` runs of each crew in `crew_ids`, in one statement (DataLoader).
pub async fn recent_runs(
    conn: &mut AsyncPgConnection,
    crew_ids: &[Uuid],
    limit: i64,
) -> QueryResult<Vec<CrewRunRow>> {
    // One lateral read per crew, each on the (crew_id, id DESC) index. A fixed text, prepared
    // once per connection; its columns are named, as a prepared `*` would fail once the table
    // gains a column.
    crate::db::reusable::Reusable(
        diesel::sql_query(
            "SELECT r.* FROM unnest($1::uuid[]) AS c(id) CROSS JOIN LATERAL \
             (SELECT id, user_id, crew_id, crew_name, process, inputs, status, output, error, \
                     cancel_requested, heartbeat_at, created_at, started_at, finished_at \
              FROM crew_runs WHERE crew_id = c.id ORDER BY id DESC LIMIT $2) r",
        )
        .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(crew_ids.to_vec())
        .bind::<diesel::sql_types::BigInt, _>(limit),
    )
    .load(conn)
    .await
}
