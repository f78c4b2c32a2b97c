//! Rows of `executions`, `execution_events` and `idempotency_keys`, and the queries on them.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::{
    reusable::Reusable,
    schema::{execution_events, executions},
};

crate::text_enum! {
    /// Where a run is.
    pub enum ExecutionStatus {
        /// Accepted, not started yet.
        Queued => "QUEUED",
        /// Streaming from the provider.
        Running => "RUNNING",
        /// Finished normally.
        Succeeded => "SUCCEEDED",
        /// Ended by an error (see `error`).
        Failed => "FAILED",
        /// Ended by `cancelExecution`.
        Cancelled => "CANCELLED",
        /// Ended by the per-run time limit.
        TimedOut => "TIMED_OUT",
    }
}

impl ExecutionStatus {
    /// States of a run that has not ended.
    pub const UNFINISHED: [Self; 2] = [Self::Queued, Self::Running];

    /// Whether the run has ended.
    pub fn is_finished(self) -> bool {
        !Self::UNFINISHED.contains(&self)
    }
}

crate::text_enum! {
    /// A run's part in a crew run.
    pub enum CrewRole {
        /// Works on one of the crew's tasks (`crewTask` says which).
        Task => "TASK",
        /// The manager of a HIERARCHICAL crew: delegates and assembles the final answer.
        Manager => "MANAGER",
        /// Work the manager delegated to a member.
        Delegation => "DELEGATION",
    }
}

crate::text_enum! {
    /// What an event says.
    #[graphql(name = "ExecutionEventKind")]
    pub enum EventKind {
        /// The run started (`data`: model, provider).
        Started => "STARTED",
        /// Output text (`delta`).
        OutputDelta => "OUTPUT_DELTA",
        /// A tool was called.
        ToolCall => "TOOL_CALL",
        /// A tool answered.
        ToolResult => "TOOL_RESULT",
        /// Tokens and cost (`data`).
        Usage => "USAGE",
        /// Terminal: success.
        Completed => "COMPLETED",
        /// Terminal: failure (`data.error`).
        Failed => "FAILED",
        /// Terminal: cancelled.
        Cancelled => "CANCELLED",
        /// Terminal: timed out.
        TimedOut => "TIMED_OUT",
    }
}

impl EventKind {
    /// Whether this kind ends a run's stream.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Cancelled | Self::TimedOut
        )
    }
}

/// Which of a user's runs a list shows.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunFilter {
    /// Only this agent's.
    pub agent_id: Option<Uuid>,
    /// Only this thread's.
    pub thread_id: Option<Uuid>,
    /// Only in this status.
    pub status: Option<ExecutionStatus>,
}

/// A row of `executions`.
#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = executions, check_for_backend(diesel::pg::Pg))]
pub struct ExecutionRow {
    /// Primary key (UUIDv7: newest first is id order).
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// The agent that ran.
    pub agent_id: Uuid,
    /// The key it ran on (null once that key is deleted).
    pub api_key_id: Option<Uuid>,
    /// Provider name at the time of the run.
    pub provider: String,
    /// Model at the time of the run.
    pub model: String,
    /// Where the run is.
    pub status: ExecutionStatus,
    /// The user's input.
    pub input: String,
    /// The output assembled so far.
    pub output: String,
    /// Why the run failed.
    pub error: Option<String>,
    /// Prompt tokens.
    pub input_tokens: i64,
    /// Completion tokens.
    pub output_tokens: i64,
    /// Cost in micro-dollars.
    pub cost_micros: i64,
    /// Whether tokens or price were estimated.
    pub cost_estimated: bool,
    /// Highest event sequence written.
    pub last_sequence: i32,
    /// Whether a cancel was requested.
    pub cancel_requested: bool,
    /// Last sign of life of the runner.
    pub heartbeat_at: DateTime<Utc>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// When streaming began.
    pub started_at: Option<DateTime<Utc>>,
    /// When the run ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// The conversation thread the run belongs to, if any.
    pub thread_id: Option<Uuid>,
    /// The crew run the run is a step of, if any.
    pub crew_run_id: Option<Uuid>,
    /// Its part in that crew run.
    pub crew_role: Option<CrewRole>,
    /// The crew task it works on (index into the crew's tasks), for TASK runs.
    pub crew_task: Option<i32>,
}

impl ExecutionRow {
    /// Whether the run has ended.
    pub fn is_finished(&self) -> bool {
        self.status.is_finished()
    }
}

/// The time to stamp on a new event: now, to the microsecond, which is all a `timestamptz`
/// keeps. The event is published live with the same value it is stored with, so a watcher and
/// a later reader of the history (or a replay after a reconnect) see the same `at`.
pub fn event_time() -> DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(6)
}

/// A row of `execution_events`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = execution_events, check_for_backend(diesel::pg::Pg))]
pub struct EventRow {
    /// The run.
    pub execution_id: Uuid,
    /// 1, 2, 3 … per run, without gaps.
    pub sequence: i32,
    /// What the event says.
    pub kind: EventKind,
    /// Output text of an OUTPUT_DELTA.
    pub delta: Option<String>,
    /// Structured details (usage, error).
    pub data: Option<serde_json::Value>,
    /// When it happened.
    pub at: DateTime<Utc>,
}

crate::owned_queries!(executions, ExecutionRow);

/// A run by id, whoever owns it (runner and recovery only).
pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<ExecutionRow>> {
    executions::table
        .find(id)
        .select(ExecutionRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// A page of a user's runs, newest first, optionally for one agent and one status.
pub async fn page_owned(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    of: RunFilter,
    before: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<ExecutionRow>> {
    let RunFilter {
        agent_id,
        thread_id,
        status,
    } = of;
    let mut query = executions::table
        .filter(executions::user_id.eq(user_id))
        .order(executions::id.desc())
        .limit(limit)
        .select(ExecutionRow::as_select())
        .into_boxed();
    if let Some(agent_id) = agent_id {
        query = query.filter(executions::agent_id.eq(agent_id));
    }
    if let Some(thread_id) = thread_id {
        query = query.filter(executions::thread_id.eq(thread_id));
    }
    if let Some(status) = status {
        query = query.filter(executions::status.eq(status));
    }
    if let Some(before) = before {
        query = query.filter(executions::id.lt(before));
    }
    query.load(conn).await
}

/// Events of a run with `sequence > after`, in order, at most `limit`.
pub async fn events_after(
    conn: &mut AsyncPgConnection,
    execution_id: Uuid,
    after: i32,
    limit: i64,
) -> QueryResult<Vec<EventRow>> {
    execution_events::table
        .filter(execution_events::execution_id.eq(execution_id))
        .filter(execution_events::sequence.gt(after))
        .order(execution_events::sequence.asc())
        .limit(limit)
        .select(EventRow::as_select())
        .load(conn)
        .await
}

/// Whose newest runs a batch read is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecentOf {
    /// Each agent's (`Agent.executions`).
    Agent,
    /// Each thread's (`Thread.executions`).
    Thread,
    /// Each crew run's (`CrewRun.executions`).
    CrewRun,
}

/// Which of a run's columns a batch read of runs carries: a list reads what its selection
/// shows. A page of agents that shows each one's runs' status, tokens and cost need not have
/// PostgreSQL send, and Agentry decode and copy, every run's output, model and error: the
/// batch read of runs was a third of such a page's database time (most of it sending
/// columns) and a sixth of its CPU in Agentry.
///
/// A column a read leaves out reads as empty (`''` or NULL) in its rows. A resolver of
/// `Execution` that reads a column outside [`RunColumns::Summary`]'s must be named in
/// `executions::graphql::run_columns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunColumns {
    /// The whole rows.
    All,
    /// Without `input` and `output`.
    NoText,
    /// What places and sums up a run: ids, owner, parent, status, tokens, cost, when it was
    /// created; without its text, provider, model, error, start and end, crew role and task.
    Summary,
}

/// Every column an [`ExecutionRow`] needs, by name, with the given expressions for `input` and
/// `output`: listed rather than `*`, because the statement stays prepared on its connection, and
/// a `*` whose table gained a column (another instance migrating first) would no longer match
/// its prepared result.
macro_rules! run_columns {
    ($input:literal, $output:literal) => {
        concat!(
            "id, user_id, agent_id, api_key_id, provider, model, status, ",
            $input,
            ", ",
            $output,
            ", error, input_tokens, output_tokens, cost_micros, cost_estimated, last_sequence, \
             cancel_requested, heartbeat_at, created_at, started_at, finished_at, thread_id, \
             crew_run_id, crew_role, crew_task"
        )
    };
}

/// The whole rows.
const RUN_COLUMNS: &str = run_columns!("input", "output");

/// The rows with `input` and `output` empty.
const RUN_COLUMNS_WITHOUT_TEXT: &str = run_columns!("''::text AS input", "''::text AS output");

/// The columns of a [`RunSummaryRow`], in its order.
const RUN_SUMMARY_COLUMNS: &str = "id, user_id, agent_id, api_key_id, status, input_tokens, \
     output_tokens, cost_micros, cost_estimated, last_sequence, cancel_requested, heartbeat_at, \
     created_at, thread_id, crew_run_id";

/// A run as a [`RunColumns::Summary`] read decodes it (by position, from
/// `RUN_SUMMARY_COLUMNS`), before it becomes an [`ExecutionRow`] with the rest empty.
/// (`Selectable` checks its fields' types against the table's columns, and lets a test check
/// `RUN_SUMMARY_COLUMNS` against its order.)
#[derive(Queryable, Selectable)]
#[diesel(table_name = executions, check_for_backend(diesel::pg::Pg))]
struct RunSummaryRow {
    id: Uuid,
    user_id: Uuid,
    agent_id: Uuid,
    api_key_id: Option<Uuid>,
    status: ExecutionStatus,
    input_tokens: i64,
    output_tokens: i64,
    cost_micros: i64,
    cost_estimated: bool,
    last_sequence: i32,
    cancel_requested: bool,
    heartbeat_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    thread_id: Option<Uuid>,
    crew_run_id: Option<Uuid>,
}

/// The SQL types of `RUN_SUMMARY_COLUMNS`.
type RunSummarySql = (
    diesel::sql_types::Uuid,
    diesel::sql_types::Uuid,
    diesel::sql_types::Uuid,
    diesel::sql_types::Nullable<diesel::sql_types::Uuid>,
    diesel::sql_types::Text,
    diesel::sql_types::BigInt,
    diesel::sql_types::BigInt,
    diesel::sql_types::BigInt,
    diesel::sql_types::Bool,
    diesel::sql_types::Integer,
    diesel::sql_types::Bool,
    diesel::sql_types::Timestamptz,
    diesel::sql_types::Timestamptz,
    diesel::sql_types::Nullable<diesel::sql_types::Uuid>,
    diesel::sql_types::Nullable<diesel::sql_types::Uuid>,
);

impl From<RunSummaryRow> for ExecutionRow {
    fn from(run: RunSummaryRow) -> Self {
        Self {
            id: run.id,
            user_id: run.user_id,
            agent_id: run.agent_id,
            api_key_id: run.api_key_id,
            provider: String::new(),
            model: String::new(),
            status: run.status,
            input: String::new(),
            output: String::new(),
            error: None,
            input_tokens: run.input_tokens,
            output_tokens: run.output_tokens,
            cost_micros: run.cost_micros,
            cost_estimated: run.cost_estimated,
            last_sequence: run.last_sequence,
            cancel_requested: run.cancel_requested,
            heartbeat_at: run.heartbeat_at,
            created_at: run.created_at,
            started_at: None,
            finished_at: None,
            thread_id: run.thread_id,
            crew_run_id: run.crew_run_id,
            crew_role: None,
            crew_task: None,
        }
    }
}

/// The newest `limit` runs of each agent (thread, crew run) in `ids`, in one statement
/// (DataLoader), each parent's newest first, with the columns `columns` names.
pub async fn recent_runs(
    conn: &mut AsyncPgConnection,
    of: RecentOf,
    ids: &[Uuid],
    limit: i64,
    columns: RunColumns,
) -> QueryResult<Vec<ExecutionRow>> {
    // A lateral join per parent: each side uses the parent's (parent, id) index. (Selecting
    // the rows by `id IN (…)` through diesel's DSL instead was slower: the planner's semi-join
    // costs more than the lateral read.)
    let parent = match of {
        RecentOf::Agent => "agent_id",
        RecentOf::Thread => "thread_id",
        RecentOf::CrewRun => "crew_run_id",
    };
    // Typed SQL (`select(sql::<the row's SQL types>)`), not `sql_query`, so that the rows are
    // decoded by position: `sql_query` rows are read by column name, a search of the row's
    // columns for each of the 24 fields, which was about a tenth of a 50-agent page's CPU. The
    // text after `SELECT` is the whole rest of the statement; `e.*` keeps the order of the
    // listed columns, which is the row type's. One of nine texts (parent × columns): prepared
    // once per connection.
    macro_rules! lateral {
        ($sql_type:ty, $columns:expr) => {{
            use diesel::{
                dsl::sql,
                sql_types::{Array, BigInt, Uuid as SqlUuid},
            };
            let statement = sql::<$sql_type>("e.* FROM unnest(")
                .bind::<Array<SqlUuid>, _>(ids.to_vec())
                .sql(&format!(
                    "::uuid[]) AS a(id) CROSS JOIN LATERAL \
                     (SELECT {} FROM executions WHERE {parent} = a.id ORDER BY id DESC LIMIT ",
                    $columns
                ))
                .bind::<BigInt, _>(limit)
                .sql(") e");
            Reusable(diesel::select(statement))
        }};
    }
    match columns {
        RunColumns::All => {
            lateral!(executions::SqlType, RUN_COLUMNS)
                .load::<ExecutionRow>(conn)
                .await
        }
        RunColumns::NoText => {
            lateral!(executions::SqlType, RUN_COLUMNS_WITHOUT_TEXT)
                .load::<ExecutionRow>(conn)
                .await
        }
        RunColumns::Summary => Ok(lateral!(RunSummarySql, RUN_SUMMARY_COLUMNS)
            .load::<RunSummaryRow>(conn)
            .await?
            .into_iter()
            .map(ExecutionRow::from)
            .collect()),
    }
}

/// Totals of one key's runs.
#[derive(Debug, Clone, Default, QueryableByName)]
pub struct UsageRow {
    /// The key.
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub api_key_id: Uuid,
    /// Number of runs.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub executions: i64,
    /// Prompt tokens.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub input_tokens: i64,
    /// Completion tokens.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub output_tokens: i64,
    /// Cost in micro-dollars.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub cost_micros: i64,
}

/// Usage of each key in `key_ids` for runs created in `[since, until)`, in one statement.
pub async fn usage_by_keys(
    conn: &mut AsyncPgConnection,
    key_ids: &[Uuid],
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> QueryResult<Vec<UsageRow>> {
    use diesel::sql_types::{Array, Nullable, Timestamptz};
    // sum(bigint) is numeric in PostgreSQL: cast back, the totals fit in bigint.
    diesel::sql_query(
        "SELECT api_key_id, count(*)::bigint AS executions, \
                coalesce(sum(input_tokens), 0)::bigint AS input_tokens, \
                coalesce(sum(output_tokens), 0)::bigint AS output_tokens, \
                coalesce(sum(cost_micros), 0)::bigint AS cost_micros \
         FROM executions \
         WHERE api_key_id = ANY($1) \
           AND ($2::timestamptz IS NULL OR created_at >= $2) \
           AND ($3::timestamptz IS NULL OR created_at < $3) \
         GROUP BY api_key_id",
    )
    .bind::<Array<diesel::sql_types::Uuid>, _>(key_ids.to_vec())
    .bind::<Nullable<Timestamptz>, _>(since)
    .bind::<Nullable<Timestamptz>, _>(until)
    .load(conn)
    .await
}

/// Runs by id, whoever owns them (the hub reads changed runs for their owners' watchers).
pub async fn find_many(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> QueryResult<Vec<ExecutionRow>> {
    executions::table
        .filter(executions::id.eq_any(ids))
        .select(ExecutionRow::as_select())
        .load(conn)
        .await
}

/// Runs of agent `agent_id` that have not ended.
pub async fn count_unfinished_of_agent(
    conn: &mut AsyncPgConnection,
    agent_id: Uuid,
) -> QueryResult<i64> {
    executions::table
        .filter(executions::agent_id.eq(agent_id))
        .filter(executions::status.eq_any(ExecutionStatus::UNFINISHED))
        .count()
        .get_result(conn)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page's runs are decoded by position into `ExecutionRow`, so the raw column lists must
    /// name its fields in its order (the order of its `Selectable` select clause); two columns
    /// of one type swapped would otherwise decode silently into each other's fields.
    #[test]
    fn the_raw_run_columns_are_in_the_rows_order() {
        use diesel::{debug_query, pg::Pg};
        let whole = executions::table.select(ExecutionRow::as_select());
        let whole = debug_query::<Pg, _>(&whole).to_string();
        let summary = executions::table.select(RunSummaryRow::as_select());
        let summary = debug_query::<Pg, _>(&summary).to_string();
        let (whole, summary) = (select_list(&whole), select_list(&summary));
        for (columns, listed, count) in [
            (RUN_COLUMNS, &whole, 24),
            (RUN_COLUMNS_WITHOUT_TEXT, &whole, 24),
            (RUN_SUMMARY_COLUMNS, &summary, 15),
        ] {
            assert_eq!(listed.len(), count, "{listed:?}");
            let names: Vec<&str> = columns
                .split(", ")
                .map(|column| column.rsplit(' ').next().unwrap_or_default())
                .collect();
            assert_eq!(&names, listed, "{columns}");
        }
    }

    /// The column names of a `SELECT` statement's select list, in its order.
    fn select_list(selected: &str) -> Vec<&str> {
        selected
            .trim_start_matches("SELECT ")
            .split(" FROM ")
            .next()
            .unwrap_or_default()
            .split(", ")
            .map(|column| {
                column
                    .rsplit('.')
                    .next()
                    .unwrap_or_default()
                    .trim_matches('"')
            })
            .collect()
    }
}
