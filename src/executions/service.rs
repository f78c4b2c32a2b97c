//! Run rules: starting a run (ownership, active agent and key, idempotency, the per-user
//! concurrency cap), cancelling, and listing.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{
    agents,
    api_keys::{self, model::ApiKeyRow},
    budgets::service::Allowance,
    db::{
        Pool,
        schema::{executions, idempotency_keys},
        shared::SharedRows,
    },
    error::{AppError, AppResult},
    executions::{
        hub::{CANCEL_CHANNEL, EXECUTION_CHANNEL, SIGNAL_CHANNEL, notify},
        model::{
            self, CrewRole, EventRow, ExecutionRow, ExecutionStatus, RecentOf, RunColumns,
            RunFilter, UsageRow,
        },
        runner,
    },
    request::Viewer,
    state::AppState,
};

/// Longest run input, in characters.
pub const MAX_INPUT_CHARS: usize = 32_000;
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;

fn not_found() -> AppError {
    AppError::NotFound { what: "execution" }
}

/// Takes the user's run lock for the rest of the transaction: run starts (the idempotency check,
/// the concurrency count, a thread's one-run rule) and thread deletions of one user see each
/// other's writes.
pub async fn lock_user(
    conn: &mut diesel_async::AsyncPgConnection,
    user_id: Uuid,
) -> QueryResult<()> {
    // A fixed text, sent with every run start: prepared once per connection.
    crate::db::reusable::Reusable(
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 7220431))")
            .bind::<diesel::sql_types::Text, _>(user_id.to_string()),
    )
    .execute(conn)
    .await
    .map(|_| ())
}

/// The key an agent runs on, or why it cannot run (inactive agent, key deleted or inactive).
fn runnable_key(agent_active: bool, key: Option<ApiKeyRow>) -> AppResult<ApiKeyRow> {
    if !agent_active {
        return Err(AppError::bad_input(
            "agentId",
            "the agent is inactive: activate it first",
        ));
    }
    let key =
        key.ok_or_else(|| AppError::bad_input("agentId", "the agent's API key no longer exists"))?;
    if !key.is_active {
        return Err(AppError::bad_input(
            "agentId",
            format!(
                "the agent's API key `{}` is inactive: activate it or give the agent another",
                key.name
            ),
        ));
    }
    Ok(key)
}

/// About how many tokens a run's first request is (system prompt and input, four characters a
/// token), for the per-run token caps of budgets.
fn input_estimate(agent: &agents::model::AgentRow, input: &str) -> i64 {
    let chars = agents::service::system_prompt(agent).len() + input.len() + 200;
    i64::try_from(chars.div_ceil(4)).unwrap_or(i64::MAX)
}

/// Where a run started by a crew run belongs.
#[derive(Debug, Clone, Copy)]
pub struct CrewLink {
    /// The crew run.
    pub crew_run_id: Uuid,
    /// The run's part in it.
    pub role: CrewRole,
    /// The task's index, for a TASK run.
    pub task: Option<i32>,
}

/// Starts a run of the user's agent as a step of a crew run, with `extension`'s functions
/// offered besides the agent's tools. Refused like `executeAgent` when the agent or its key is
/// inactive (BAD_USER_INPUT naming `agentId`). No idempotency key, no thread, and no
/// concurrency check: the crew run was admitted under the cap, and a crew must not fail
/// half-way because other runs started meanwhile. Returns the run and its runner task (which
/// ends when the run has ended).
pub async fn start_crew_step(
    state: &AppState,
    user_id: Uuid,
    agent_id: Uuid,
    input: &str,
    link: CrewLink,
    extension: Option<std::sync::Arc<dyn crate::tools::Extension>>,
) -> AppResult<(ExecutionRow, tokio::task::JoinHandle<()>)> {
    if input.trim().is_empty() {
        return Err(AppError::bad_input("input", "must not be empty"));
    }
    let chars = input.chars().count();
    if chars > MAX_INPUT_CHARS {
        return Err(AppError::bad_input(
            "input",
            format!("must be at most {MAX_INPUT_CHARS} characters (got {chars})"),
        ));
    }
    let mut conn = state.pool.get().await?;
    let agent = agents::model::find_owned(&mut conn, user_id, agent_id)
        .await?
        .ok_or(AppError::NotFound { what: "agent" })?;
    let key = api_keys::model::find_owned(&mut conn, user_id, agent.api_key_id).await?;
    let key = runnable_key(agent.is_active, key)?;
    let allowance = Allowance::of_run(&mut conn, user_id, key.id, agent.id).await?;
    let estimate = input_estimate(&agent, input);
    allowance.admit(
        estimate,
        state.pricing.cost_micros(&agent.model, estimate, 0),
    )?;
    let execution = conn
        .transaction::<_, AppError, _>(async |conn| {
            let execution: ExecutionRow = diesel::insert_into(executions::table)
                .values((
                    executions::id.eq(Uuid::now_v7()),
                    executions::user_id.eq(user_id),
                    executions::agent_id.eq(agent.id),
                    executions::api_key_id.eq(Some(key.id)),
                    executions::provider.eq(&key.provider),
                    executions::model.eq(&agent.model),
                    executions::input.eq(input),
                    executions::crew_run_id.eq(Some(link.crew_run_id)),
                    executions::crew_role.eq(Some(link.role)),
                    executions::crew_task.eq(link.task),
                ))
                .returning(ExecutionRow::as_returning())
                .get_result(conn)
                .await?;
            notify(
                conn,
                EXECUTION_CHANNEL,
                &format!("{}:{user_id}", execution.id),
            )
            .await?;
            Ok(execution)
        })
        .await?;
    drop(conn);
    tracing::info!(execution.id = %execution.id, crew_run.id = %link.crew_run_id, agent.id = %agent.id, "crew step queued");
    let runner = runner::spawn(
        state.clone(),
        execution.clone(),
        agent,
        key,
        extension,
        allowance,
    );
    Ok((execution, runner))
}

/// Starts a run of the viewer's agent and returns it at once (QUEUED); a runner task does the
/// rest. The same idempotency key with the same request returns the same run.
pub async fn execute(
    state: &AppState,
    viewer: &Viewer,
    agent_id: Uuid,
    input: String,
    idempotency_key: Option<String>,
    thread_id: Option<Uuid>,
) -> AppResult<ExecutionRow> {
    let input = input.trim().to_owned();
    if input.is_empty() {
        return Err(AppError::bad_input("input", "must not be empty"));
    }
    let chars = input.chars().count();
    if chars > MAX_INPUT_CHARS {
        return Err(AppError::bad_input(
            "input",
            format!("must be at most {MAX_INPUT_CHARS} characters (got {chars})"),
        ));
    }
    let idempotency_key = idempotency_key.map(|k| k.trim().to_owned());
    if let Some(key) = &idempotency_key
        && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN)
    {
        return Err(AppError::bad_input(
            "idempotencyKey",
            format!("must be 1–{MAX_IDEMPOTENCY_KEY_LEN} characters"),
        ));
    }
    let request_hash = {
        let mut hasher = Sha256::new();
        hasher.update(agent_id.as_bytes());
        hasher.update(input.as_bytes());
        if let Some(thread_id) = thread_id {
            hasher.update(thread_id.as_bytes());
        }
        hasher.finalize().to_vec()
    };

    let mut conn = state.pool.get().await?;
    let agent = agents::model::find_owned(&mut conn, viewer.id(), agent_id)
        .await?
        .ok_or(AppError::NotFound { what: "agent" })?;
    let user_id = viewer.id();
    let cap = state.config.max_concurrent_executions;
    let key_lookup = api_keys::model::find_owned(&mut conn, user_id, agent.api_key_id).await?;
    let agent_active = agent.is_active;
    let agent_for_tx = agent.clone();
    let pricing = &state.pricing;
    let (execution, key, created) = conn
        .transaction::<_, AppError, _>(async move |conn| {
            // One user at a time: the idempotency check and the concurrency count see each
            // other's inserts.
            lock_user(conn, user_id).await?;
            if let Some(key) = &idempotency_key {
                let existing: Option<(Vec<u8>, Uuid)> = idempotency_keys::table
                    .filter(idempotency_keys::user_id.eq(user_id))
                    .filter(idempotency_keys::key.eq(key))
                    .select((idempotency_keys::request_hash, idempotency_keys::execution_id))
                    .first(conn)
                    .await
                    .optional()?;
                if let Some((hash, execution_id)) = existing {
                    if hash != request_hash {
                        return Err(AppError::Conflict(
                            "this idempotency key was already used with a different agent or input".into(),
                        ));
                    }
                    let execution = model::find_owned(conn, user_id, execution_id).await?.ok_or_else(not_found)?;
                    return Ok((execution, None, false));
                }
            }
            let key = runnable_key(agent_active, key_lookup)?;
            let allowance = Allowance::of_run(conn, user_id, key.id, agent_for_tx.id).await?;
            let estimate = input_estimate(&agent_for_tx, &input);
            allowance.admit(estimate, pricing.cost_micros(&agent_for_tx.model, estimate, 0))?;
            let running = unfinished_count(conn, user_id).await?;
            if let Some(thread_id) = thread_id {
                crate::threads::service::admit_run(conn, user_id, thread_id, agent_for_tx.id, &input).await?;
            }
            if running >= cap {
                return Err(AppError::RateLimited {
                    retry_after_secs: 1,
                    reason: Some(format!(
                        "you already have {running} runs in progress (the limit is {cap}): wait for one to finish"
                    )),
                });
            }
            let execution: ExecutionRow = diesel::insert_into(executions::table)
                .values((
                    executions::id.eq(Uuid::now_v7()),
                    executions::user_id.eq(user_id),
                    executions::agent_id.eq(agent_for_tx.id),
                    executions::api_key_id.eq(Some(key.id)),
                    executions::provider.eq(&key.provider),
                    executions::model.eq(&agent_for_tx.model),
                    executions::input.eq(&input),
                    executions::thread_id.eq(thread_id),
                ))
                .returning(ExecutionRow::as_returning())
                .get_result(conn)
                .await?;
            if let Some(idempotency) = &idempotency_key {
                diesel::insert_into(idempotency_keys::table)
                    .values((
                        idempotency_keys::user_id.eq(user_id),
                        idempotency_keys::key.eq(idempotency),
                        idempotency_keys::request_hash.eq(&request_hash),
                        idempotency_keys::execution_id.eq(execution.id),
                    ))
                    .execute(conn)
                    .await?;
            }
            notify(conn, EXECUTION_CHANNEL, &format!("{}:{user_id}", execution.id)).await?;
            Ok((execution, Some((key, allowance)), true))
        })
        .await?;
    if created && let Some((key, allowance)) = key {
        tracing::info!(execution.id = %execution.id, agent.id = %agent.id, user.id = %user_id, "run queued");
        runner::spawn(
            state.clone(),
            execution.clone(),
            agent,
            key,
            None,
            allowance,
        );
    }
    Ok(execution)
}

/// The viewer's run, or `NOT_FOUND`.
pub async fn get(state: &AppState, viewer: &Viewer, id: Uuid) -> AppResult<ExecutionRow> {
    let mut conn = state.pool.get().await?;
    model::find_owned(&mut conn, viewer.id(), id)
        .await?
        .ok_or_else(not_found)
}

/// Stops a run: the runner (on whichever instance) drops the provider stream, keeps the
/// partial output and ends the run CANCELLED. A finished run is returned unchanged. Waits
/// briefly for the run to end so the answer usually shows CANCELLED.
pub async fn cancel(state: &AppState, viewer: &Viewer, id: Uuid) -> AppResult<ExecutionRow> {
    let mut conn = state.pool.get().await?;
    let execution = model::find_owned(&mut conn, viewer.id(), id)
        .await?
        .ok_or_else(not_found)?;
    if execution.is_finished() {
        return Ok(execution);
    }
    request_cancel(state, &mut conn, id).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let current = model::find_owned(&mut conn, viewer.id(), id)
            .await?
            .ok_or_else(not_found)?;
        if current.is_finished() || tokio::time::Instant::now() >= deadline {
            return Ok(current);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// How many runs of the user are queued or running.
pub async fn unfinished_count(
    conn: &mut diesel_async::AsyncPgConnection,
    user_id: Uuid,
) -> QueryResult<i64> {
    executions::table
        .filter(executions::user_id.eq(user_id))
        .filter(executions::status.eq_any(ExecutionStatus::UNFINISHED))
        .count()
        .get_result(conn)
        .await
}

/// Delivers a cancel to whatever registered `id` with the hub (a runner, a crew run's
/// coordinator), on whichever instance it works.
pub async fn signal_cancel(state: &AppState, id: Uuid) -> AppResult<()> {
    if !state.hub.cancel(id) {
        let mut conn = state.pool.get().await?;
        notify(&mut conn, CANCEL_CHANNEL, &id.to_string()).await?;
    }
    Ok(())
}

/// Tells the watchers of `id` on every instance that it changed ([`SIGNAL_CHANNEL`]); call
/// after the change is committed.
pub async fn announce(state: &AppState, id: Uuid) -> AppResult<()> {
    let mut conn = state.pool.get().await?;
    Ok(notify(&mut conn, SIGNAL_CHANNEL, &id.to_string()).await?)
}

/// Asks the runner of run `id` (on whichever instance) to stop.
async fn request_cancel(
    state: &AppState,
    conn: &mut diesel_async::AsyncPgConnection,
    id: Uuid,
) -> AppResult<()> {
    // The flag covers a runner that has not registered yet: it checks it when it starts.
    diesel::update(executions::table.find(id))
        .set(executions::cancel_requested.eq(true))
        .execute(conn)
        .await?;
    if !state.hub.cancel(id) {
        // Running elsewhere (or about to start): tell every instance.
        notify(conn, CANCEL_CHANNEL, &id.to_string()).await?;
    }
    Ok(())
}

/// Stops a crew step the caller started (no ownership check: the crew runner holds the id).
/// The step's runner works in this process, so the switch reaches it without the database; the
/// flag is for a runner that has not registered yet.
pub async fn cancel_step(state: &AppState, id: Uuid) -> AppResult<()> {
    if state.hub.cancel(id) {
        return Ok(());
    }
    let mut conn = state.pool.get().await?;
    request_cancel(state, &mut conn, id).await
}

/// A run by id whoever owns it, for the crew runner that started it.
pub async fn step(state: &AppState, id: Uuid) -> AppResult<ExecutionRow> {
    let mut conn = state.pool.get().await?;
    model::find(&mut conn, id).await?.ok_or_else(not_found)
}

/// The newest `limit` runs of a crew run, oldest first. No
/// owner filter: the crew run was already shown to be the caller's. Waits for a busy pool.
pub async fn of_crew_run(
    state: &AppState,
    crew_run_id: Uuid,
    limit: i64,
) -> AppResult<Vec<ExecutionRow>> {
    // Read by subscriptions, which a busy pool must delay, not end.
    let mut rows = crate::db::patient(
        &state.pool,
        Duration::from_secs(60),
        "reading a crew run's steps",
        move |conn| {
            Box::pin(async move {
                let all = RunColumns::All;
                model::recent_runs(conn, RecentOf::CrewRun, &[crew_run_id], limit, all).await
            })
        },
    )
    .await?;
    rows.reverse();
    Ok(rows)
}

/// A page of the viewer's runs, newest first.
pub async fn page(
    state: &AppState,
    viewer: &Viewer,
    of: RunFilter,
    before: Option<Uuid>,
    limit: i64,
) -> AppResult<Vec<ExecutionRow>> {
    let mut conn = state.pool.get().await?;
    Ok(model::page_owned(&mut conn, viewer.id(), of, before, limit).await?)
}

/// Up to `first` stored events of a run the viewer was already shown (`run` came from an owned
/// query), with `sequence > after`, in order.
pub async fn events_of(
    state: &AppState,
    run: &ExecutionRow,
    after: i32,
    first: i32,
) -> AppResult<Vec<EventRow>> {
    let mut conn = state.pool.get().await?;
    Ok(model::events_after(&mut conn, run.id, after, i64::from(first)).await?)
}

/// Key of a batch read of runs: the parent (agent, thread, crew run), how many, and which of
/// their columns.
pub type RecentKey = (Uuid, i64, RunColumns);

/// The newest runs of many agents (or threads, crew runs) at once, keyed by (parent id, how
/// many, which columns), for the request's DataLoaders: one statement per distinct page size
/// and column choice (usually one for the whole batch). No owner filter: the ids come from
/// rows the viewer was already allowed to read.
pub async fn recent_runs(
    pool: &Pool,
    of: RecentOf,
    keys: &[RecentKey],
) -> AppResult<HashMap<RecentKey, SharedRows<ExecutionRow>>> {
    let mut conn = pool.get().await?;
    let mut by_shape: HashMap<(i64, RunColumns), Vec<Uuid>> = HashMap::new();
    for (parent, limit, columns) in keys {
        by_shape
            .entry((*limit, *columns))
            .or_default()
            .push(*parent);
    }
    let mut out = HashMap::with_capacity(keys.len());
    for ((limit, columns), parents) in by_shape {
        let rows = model::recent_runs(&mut conn, of, &parents, limit, columns).await?;
        let parent_of = |row: &ExecutionRow| match of {
            RecentOf::Agent => Some(row.agent_id),
            RecentOf::Thread => row.thread_id,
            RecentOf::CrewRun => row.crew_run_id,
        };
        for (parent, rows) in SharedRows::split(rows, &parents, parent_of) {
            out.insert((parent, limit, columns), rows);
        }
    }
    Ok(out)
}

/// A half-open period `[since, until)`, either end open when `None`.
type Period = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// Key of a usage lookup: the API key and the half-open period.
pub type UsageKey = (Uuid, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// The runs, tokens and cost of many API keys at once, each over its period, for the request's
/// DataLoader: one statement per distinct period; a key without runs sums to zero. No owner
/// filter: the key ids come from keys the viewer was already allowed to read.
pub async fn usage_by_keys(
    pool: &Pool,
    keys: &[UsageKey],
) -> AppResult<HashMap<UsageKey, UsageRow>> {
    let mut conn = pool.get().await?;
    let mut by_period: HashMap<Period, Vec<Uuid>> = HashMap::new();
    for (key, since, until) in keys {
        by_period.entry((*since, *until)).or_default().push(*key);
    }
    let mut out = HashMap::new();
    for ((since, until), ids) in by_period {
        let rows = model::usage_by_keys(&mut conn, &ids, since, until).await?;
        for id in &ids {
            let zero = UsageRow {
                api_key_id: *id,
                ..UsageRow::default()
            };
            out.insert((*id, since, until), zero);
        }
        for row in rows {
            out.insert((row.api_key_id, since, until), row);
        }
    }
    Ok(out)
}
