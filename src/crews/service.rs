//! Crew rules: a crew is the viewer's, its members and manager are agents of theirs, its tasks
//! are bounded and refer only to earlier tasks; `{name}` placeholders in task texts are the
//! crew's inputs, each required when it runs; a crew run is admitted under the user's
//! concurrency cap and then worked through by [`runner`]; another user's crew or crew run is
//! NOT_FOUND.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    agents::{self, model::AgentRow},
    crews::{
        model::{self, CrewProcess, CrewRow, CrewRunRow, CrewRunStatus, TaskSpec},
        runner,
    },
    db::{
        Pool,
        schema::{crew_runs, crews},
    },
    error::{AppError, AppResult, unique_or},
    executions,
    request::Viewer,
    state::AppState,
};

/// Most tasks in a crew.
pub const MAX_TASKS: usize = 20;
/// Most member agents in a crew.
pub const MAX_MEMBERS: usize = 20;
/// Longest task description, in characters.
pub const MAX_TASK_CHARS: usize = 8000;
/// Longest expected output, in characters.
pub const MAX_EXPECTED_CHARS: usize = 2000;
/// Longest input value given to `runCrew`, in characters.
pub const MAX_INPUT_VALUE_CHARS: usize = 4000;

/// A crew as the client describes it (created or replaced whole).
#[derive(Debug, Clone)]
pub struct CrewInput {
    /// Unique per user, case-insensitively.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// How the tasks are worked through.
    pub process: CrewProcess,
    /// The members (agent ids as given).
    pub agent_ids: Vec<String>,
    /// The manager of a HIERARCHICAL crew (agent id as given).
    pub manager_agent_id: Option<String>,
    /// The tasks, in order.
    pub tasks: Vec<TaskInput>,
}

/// One task as the client describes it.
#[derive(Debug, Clone)]
pub struct TaskInput {
    /// What to do; `{name}` placeholders take the run's inputs.
    pub description: String,
    /// What a good result looks like.
    pub expected_output: String,
    /// Who does it (agent id as given).
    pub agent_id: Option<String>,
    /// Earlier tasks whose outputs it receives (indexes); omitted: the task just before.
    pub context: Option<Vec<i32>>,
}

/// A crew's validated columns.
struct CrewValues {
    name: String,
    description: String,
    process: CrewProcess,
    manager_agent_id: Option<Uuid>,
    agent_ids: Vec<Uuid>,
    tasks: Vec<TaskSpec>,
}

fn not_found() -> AppError {
    AppError::NotFound { what: "crew" }
}

fn run_not_found() -> AppError {
    AppError::NotFound { what: "crew run" }
}

fn duplicate_name() -> AppError {
    AppError::Conflict("you already have a crew with this name".into())
}

/// Whether `name` is a placeholder name: a letter or `_`, then letters, digits or `_`.
fn is_placeholder(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Walks `text`, calling `each` with the text between placeholders (`Err`) and with each
/// placeholder's name (`Ok`). Other braces are text.
fn scan<'t>(text: &'t str, mut each: impl FnMut(Result<&'t str, &'t str>)) {
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) if is_placeholder(&after[..close]) => {
                each(Err(&rest[..open]));
                each(Ok(&after[..close]));
                rest = &after[close + 1..];
            }
            _ => {
                each(Err(&rest[..=open]));
                rest = after;
            }
        }
    }
    each(Err(rest));
}

/// The `{name}` placeholders of `text`, in order of first appearance.
pub fn placeholders(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    scan(text, |part| {
        if let Ok(name) = part
            && !out.iter().any(|n| n == name)
        {
            out.push(name.to_owned());
        }
    });
    out
}

/// `text` with each `{name}` placeholder replaced by its input, in one pass over the text (a
/// value is never searched for placeholders itself); a placeholder without an input stays as
/// it is ([`check_inputs`] refuses a run before that could happen).
pub fn interpolate(text: &str, inputs: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    scan(text, |part| match part {
        Err(plain) => out.push_str(plain),
        Ok(name) => match inputs.get(name) {
            Some(value) => out.push_str(value),
            None => {
                out.push('{');
                out.push_str(name);
                out.push('}');
            }
        },
    });
    out
}

/// The placeholders of a crew's tasks (descriptions and expected outputs), in order.
pub fn inputs_of(tasks: &[TaskSpec]) -> Vec<String> {
    inputs_in(
        tasks
            .iter()
            .flat_map(|t| [t.description.as_str(), t.expected_output.as_str()]),
    )
}

/// The placeholders of `texts`, each once, in order of first appearance.
pub fn inputs_in<'t>(texts: impl IntoIterator<Item = &'t str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in texts.into_iter().flat_map(placeholders) {
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// Checks `runCrew`'s inputs against the placeholders the tasks use: every one given (a
/// string, number or boolean, at most [`MAX_INPUT_VALUE_CHARS`]), none unknown. Errors name
/// `inputs.<name>`.
pub fn check_inputs(tasks: &[TaskSpec], given: &Value) -> AppResult<BTreeMap<String, String>> {
    let empty = serde_json::Map::new();
    let given = match given {
        Value::Null => &empty,
        Value::Object(map) => map,
        _ => {
            return Err(AppError::bad_input(
                "inputs",
                "must be a JSON object of input names and values",
            ));
        }
    };
    let wanted = inputs_of(tasks);
    for name in given.keys() {
        if !wanted.contains(name) {
            let known = if wanted.is_empty() {
                "the crew's tasks use no inputs".to_owned()
            } else {
                format!("the crew's inputs are: {}", wanted.join(", "))
            };
            return Err(AppError::bad_input(
                format!("inputs.{name}"),
                format!("is not used by any task ({known})"),
            ));
        }
    }
    let mut out = BTreeMap::new();
    for name in wanted {
        let field = format!("inputs.{name}");
        let value = match given.get(&name) {
            None | Some(Value::Null) => {
                return Err(AppError::bad_input(
                    field,
                    format!("is missing: the crew's tasks use {{{name}}}"),
                ));
            }
            Some(Value::String(s)) => s.trim().to_owned(),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
            Some(_) => {
                return Err(AppError::bad_input(
                    field,
                    "must be a string, a number or a boolean",
                ));
            }
        };
        if value.is_empty() {
            return Err(AppError::bad_input(field, "must not be empty"));
        }
        let chars = value.chars().count();
        if chars > MAX_INPUT_VALUE_CHARS {
            return Err(AppError::bad_input(
                field,
                format!("must be at most {MAX_INPUT_VALUE_CHARS} characters (got {chars})"),
            ));
        }
        out.insert(name, value);
    }
    Ok(out)
}

/// Parses an agent id field and checks that the agent is the viewer's.
async fn own_agent(
    conn: &mut AsyncPgConnection,
    viewer: &Viewer,
    field: &str,
    raw: &str,
) -> AppResult<AgentRow> {
    let id =
        Uuid::parse_str(raw.trim()).map_err(|_| AppError::bad_input(field, "is not a valid id"))?;
    agents::model::find_owned(conn, viewer.id(), id)
        .await?
        .ok_or_else(|| AppError::bad_input(field, "no agent of yours has this id"))
}

/// Checks every field of a crew; errors name the field (`input.tasks[1].agentId`).
async fn validate(
    conn: &mut AsyncPgConnection,
    viewer: &Viewer,
    input: CrewInput,
    except: Option<Uuid>,
) -> AppResult<CrewValues> {
    let name = agents::service::text("input.name", &input.name, true, 100)?;
    let description = agents::service::text(
        "input.description",
        input.description.as_deref().unwrap_or(""),
        false,
        2000,
    )?;
    if input.agent_ids.len() > MAX_MEMBERS {
        return Err(AppError::bad_input(
            "input.agentIds",
            format!("a crew has at most {MAX_MEMBERS} agents"),
        ));
    }
    let mut agent_ids: Vec<Uuid> = Vec::new();
    for (i, raw) in input.agent_ids.iter().enumerate() {
        let agent = own_agent(conn, viewer, &format!("input.agentIds[{i}]"), raw).await?;
        if agent_ids.contains(&agent.id) {
            return Err(AppError::bad_input(
                format!("input.agentIds[{i}]"),
                format!("the agent `{}` is listed twice", agent.name),
            ));
        }
        agent_ids.push(agent.id);
    }
    if input.tasks.is_empty() || input.tasks.len() > MAX_TASKS {
        return Err(AppError::bad_input(
            "input.tasks",
            format!("a crew has 1 to {MAX_TASKS} tasks"),
        ));
    }
    let mut tasks = Vec::with_capacity(input.tasks.len());
    for (i, task) in input.tasks.into_iter().enumerate() {
        let at = |field: &str| format!("input.tasks[{i}].{field}");
        let description =
            agents::service::text(&at("description"), &task.description, true, MAX_TASK_CHARS)?;
        let expected_output = agents::service::text(
            &at("expectedOutput"),
            &task.expected_output,
            true,
            MAX_EXPECTED_CHARS,
        )?;
        let agent_id = match &task.agent_id {
            Some(raw) => {
                let agent = own_agent(conn, viewer, &at("agentId"), raw).await?;
                if !agent_ids.contains(&agent.id) {
                    return Err(AppError::bad_input(
                        at("agentId"),
                        format!(
                            "the agent `{}` is not a member of the crew: add it to agentIds",
                            agent.name
                        ),
                    ));
                }
                Some(agent.id)
            }
            None if input.process == CrewProcess::Sequential => {
                return Err(AppError::bad_input(
                    at("agentId"),
                    "is required in a SEQUENTIAL crew: say which member does the task",
                ));
            }
            None => None,
        };
        if let Some(context) = &task.context {
            let mut seen = BTreeSet::new();
            for earlier in context {
                if *earlier < 0 || *earlier >= i as i32 {
                    return Err(AppError::bad_input(
                        at("context"),
                        format!(
                            "lists task {earlier}: a task receives only earlier tasks' outputs \
                             (indexes 0 to {})",
                            i as i32 - 1
                        ),
                    ));
                }
                if !seen.insert(*earlier) {
                    return Err(AppError::bad_input(
                        at("context"),
                        format!("lists task {earlier} twice"),
                    ));
                }
            }
        }
        tasks.push(TaskSpec {
            description,
            expected_output,
            agent_id,
            context: task.context,
        });
    }
    let manager_agent_id = match (input.process, &input.manager_agent_id) {
        (CrewProcess::Hierarchical, Some(raw)) => Some(
            own_agent(conn, viewer, "input.managerAgentId", raw)
                .await?
                .id,
        ),
        (CrewProcess::Hierarchical, None) => {
            return Err(AppError::bad_input(
                "input.managerAgentId",
                "is required in a HIERARCHICAL crew: the agent that delegates the tasks",
            ));
        }
        (CrewProcess::Sequential, Some(_)) => {
            return Err(AppError::bad_input(
                "input.managerAgentId",
                "only a HIERARCHICAL crew has a manager",
            ));
        }
        (CrewProcess::Sequential, None) => None,
    };
    if agent_ids.is_empty() {
        return Err(AppError::bad_input(
            "input.agentIds",
            "a crew needs at least one agent",
        ));
    }
    if model::name_taken(conn, viewer.id(), &name, except).await? {
        return Err(duplicate_name());
    }
    Ok(CrewValues {
        name,
        description,
        process: input.process,
        manager_agent_id,
        agent_ids,
        tasks,
    })
}

fn tasks_json(tasks: &[TaskSpec]) -> AppResult<Value> {
    serde_json::to_value(tasks).map_err(|e| AppError::Internal(e.into()))
}

/// Creates a crew.
pub async fn create(state: &AppState, viewer: &Viewer, input: CrewInput) -> AppResult<CrewRow> {
    let mut conn = state.pool.get().await?;
    create_on(&mut conn, viewer, input).await
}

/// Creates a crew on `conn` (inside the caller's transaction, when it has one): a taken name is
/// CONFLICT before anything is written, so a transaction survives it.
pub async fn create_on(
    conn: &mut AsyncPgConnection,
    viewer: &Viewer,
    input: CrewInput,
) -> AppResult<CrewRow> {
    let values = validate(conn, viewer, input, None).await?;
    diesel::insert_into(crews::table)
        .values((
            crews::id.eq(Uuid::now_v7()),
            crews::user_id.eq(viewer.id()),
            crews::name.eq(&values.name),
            crews::description.eq(&values.description),
            crews::process.eq(values.process),
            crews::manager_agent_id.eq(values.manager_agent_id),
            crews::agent_ids.eq(&values.agent_ids),
            crews::tasks.eq(tasks_json(&values.tasks)?),
        ))
        .returning(CrewRow::as_returning())
        .get_result(conn)
        .await
        .map_err(unique_or(duplicate_name))
}

/// Replaces one of the viewer's crews whole (runs under way keep what they started with).
pub async fn update(
    state: &AppState,
    viewer: &Viewer,
    id: Uuid,
    input: CrewInput,
) -> AppResult<CrewRow> {
    let mut conn = state.pool.get().await?;
    model::find_owned(&mut conn, viewer.id(), id)
        .await?
        .ok_or_else(not_found)?;
    let values = validate(&mut conn, viewer, input, Some(id)).await?;
    diesel::update(
        crews::table
            .filter(crews::id.eq(id))
            .filter(crews::user_id.eq(viewer.id())),
    )
    .set((
        crews::name.eq(&values.name),
        crews::description.eq(&values.description),
        crews::process.eq(values.process),
        crews::manager_agent_id.eq(values.manager_agent_id),
        crews::agent_ids.eq(&values.agent_ids),
        crews::tasks.eq(tasks_json(&values.tasks)?),
        crews::updated_at.eq(diesel::dsl::now),
    ))
    .returning(CrewRow::as_returning())
    .get_result(&mut conn)
    .await
    .optional()
    .map_err(unique_or(duplicate_name))?
    .ok_or_else(not_found)
}

/// Deletes one of the viewer's crews; its runs stay in the history (unlinked). CONFLICT while
/// one of its runs is under way (cancel it first).
pub async fn delete(state: &AppState, viewer: &Viewer, id: Uuid) -> AppResult<bool> {
    let mut conn = state.pool.get().await?;
    let user_id = viewer.id();
    conn.transaction::<_, AppError, _>(async move |conn| {
        let crew = crews::table
            .filter(crews::id.eq(id))
            .filter(crews::user_id.eq(user_id))
            .select(crews::id)
            .for_update()
            .first::<Uuid>(conn)
            .await
            .optional()?;
        if crew.is_none() {
            return Err(not_found());
        }
        let running: i64 = crew_runs::table
            .filter(crew_runs::crew_id.eq(id))
            .filter(crew_runs::status.eq_any(CrewRunStatus::UNFINISHED))
            .count()
            .get_result(conn)
            .await?;
        if running > 0 {
            return Err(AppError::Conflict(
                "a run of this crew is in progress: cancel it or wait for it to end".into(),
            ));
        }
        diesel::delete(crews::table.filter(crews::id.eq(id)))
            .execute(conn)
            .await?;
        Ok(true)
    })
    .await
}

/// One of the viewer's crews.
pub async fn get(state: &AppState, viewer: &Viewer, id: Uuid) -> AppResult<CrewRow> {
    let mut conn = state.pool.get().await?;
    model::find_owned(&mut conn, viewer.id(), id)
        .await?
        .ok_or_else(not_found)
}

/// A page of the viewer's crews, newest first.
pub async fn page(
    state: &AppState,
    viewer: &Viewer,
    before: Option<Uuid>,
    limit: i64,
) -> AppResult<Vec<CrewRow>> {
    let mut conn = state.pool.get().await?;
    Ok(model::page_owned(&mut conn, viewer.id(), before, limit).await?)
}

/// One of the viewer's crew runs.
pub async fn get_run(state: &AppState, viewer: &Viewer, id: Uuid) -> AppResult<CrewRunRow> {
    let mut conn = state.pool.get().await?;
    model::find_run_owned(&mut conn, viewer.id(), id)
        .await?
        .ok_or_else(run_not_found)
}

/// One of the viewer's crew runs, waiting for a busy pool rather than failing (for the
/// subscription, which a busy pool must delay, not end).
pub async fn get_run_patiently(
    state: &AppState,
    viewer: &Viewer,
    id: Uuid,
) -> AppResult<CrewRunRow> {
    let user_id = viewer.id();
    crate::db::patient(
        &state.pool,
        Duration::from_secs(60),
        "reading a followed crew run",
        move |conn| Box::pin(model::find_run_owned(conn, user_id, id)),
    )
    .await?
    .ok_or_else(run_not_found)
}

/// A page of the viewer's crew runs, newest first, optionally of one crew.
pub async fn runs_page(
    state: &AppState,
    viewer: &Viewer,
    crew_id: Option<Uuid>,
    before: Option<Uuid>,
    limit: i64,
) -> AppResult<Vec<CrewRunRow>> {
    let mut conn = state.pool.get().await?;
    Ok(model::runs_page_owned(&mut conn, viewer.id(), crew_id, before, limit).await?)
}

/// The newest runs of many crews at once, keyed by (crew id, how many), for the request's
/// DataLoader: one statement per distinct page size. No owner filter: the crew ids come from
/// crews the viewer was already allowed to read.
pub async fn recent_runs(
    pool: &Pool,
    keys: &[(Uuid, i64)],
) -> AppResult<HashMap<(Uuid, i64), Vec<CrewRunRow>>> {
    let mut conn = pool.get().await?;
    let mut by_limit: HashMap<i64, Vec<Uuid>> = HashMap::new();
    for (crew, limit) in keys {
        by_limit.entry(*limit).or_default().push(*crew);
    }
    let mut out: HashMap<(Uuid, i64), Vec<CrewRunRow>> = HashMap::new();
    for (limit, crews) in by_limit {
        for crew in &crews {
            out.insert((*crew, limit), Vec::new());
        }
        for row in model::recent_runs(&mut conn, &crews, limit).await? {
            if let Some(crew) = row.crew_id {
                out.entry((crew, limit)).or_default().push(row);
            }
        }
    }
    Ok(out)
}

/// Why an agent the crew needs cannot run, as an error on `crewId`.
fn cannot_run(what: &str, agent: &AgentRow, why: &str) -> AppError {
    AppError::bad_input(
        "crewId",
        format!("{what} (agent `{}`) cannot run: {why}", agent.name),
    )
}

/// Starts a run of the viewer's crew with `inputs` and returns it at once (QUEUED). Refused
/// before anything starts when an input is missing or unknown (BAD_USER_INPUT naming
/// `inputs.<name>`), when an agent the crew needs was deleted or is inactive (naming the task),
/// or when the user is at their concurrency cap (a crew run counts as one run besides its
/// current step).
pub async fn run(
    state: &AppState,
    viewer: &Viewer,
    crew_id: Uuid,
    inputs: Value,
) -> AppResult<CrewRunRow> {
    let user_id = viewer.id();
    let crew = get(state, viewer, crew_id).await?;
    let tasks = crew.task_list();
    let values = check_inputs(&tasks, &inputs)?;
    let mut wanted: Vec<Uuid> = crew.agent_ids.clone();
    wanted.extend(crew.manager_agent_id);
    let found = agents::service::by_ids(&state.pool, &wanted).await?;
    let by_id: HashMap<Uuid, AgentRow> = found
        .into_iter()
        .filter(|a| a.user_id == user_id)
        .map(|a| (a.id, a))
        .collect();
    let hierarchical = crew.process == CrewProcess::Hierarchical;
    // A manager delegates only to members that can run.
    let members: Vec<AgentRow> = crew
        .agent_ids
        .iter()
        .filter_map(|id| by_id.get(id).cloned())
        .filter(|a| a.is_active)
        .collect();
    let mut planned = Vec::with_capacity(tasks.len());
    for (i, task) in tasks.iter().enumerate() {
        let agent = match task.agent_id.map(|id| by_id.get(&id)) {
            // In a HIERARCHICAL crew the agent is a hint: a deleted or inactive one is dropped.
            Some(Some(agent)) if hierarchical && !agent.is_active => None,
            Some(None) if hierarchical => None,
            Some(Some(agent)) => {
                if !agent.is_active {
                    return Err(cannot_run(&format!("task {i}"), agent, "it is inactive"));
                }
                Some(agent.clone())
            }
            Some(None) => {
                return Err(AppError::bad_input(
                    "crewId",
                    format!("task {i}'s agent was deleted: update the crew"),
                ));
            }
            None => None,
        };
        let task = runner::PlannedTask {
            index: i,
            description: interpolate(&task.description, &values),
            expected_output: interpolate(&task.expected_output, &values),
            agent,
            context: task.context_of(i),
        };
        let chars = runner::task_input(&task, &[]).chars().count();
        if chars > runner::MAX_TASK_TEXT_CHARS {
            return Err(AppError::bad_input(
                "inputs",
                format!(
                    "filled in, task {i} would be {chars} characters; a task's own text may have \
                     at most {} (earlier outputs come on top): shorten the inputs",
                    runner::MAX_TASK_TEXT_CHARS
                ),
            ));
        }
        planned.push(task);
    }
    let manager = match crew.process {
        CrewProcess::Sequential => None,
        CrewProcess::Hierarchical => {
            let manager = crew
                .manager_agent_id
                .and_then(|id| by_id.get(&id).cloned())
                .ok_or_else(|| {
                    AppError::bad_input(
                        "crewId",
                        "the crew's manager agent was deleted: update the crew",
                    )
                })?;
            if !manager.is_active {
                return Err(cannot_run("the manager", &manager, "it is inactive"));
            }
            if members.is_empty() {
                return Err(AppError::bad_input(
                    "crewId",
                    "none of the crew's agents can run (deleted or inactive): update the crew",
                ));
            }
            Some(manager)
        }
    };
    let cap = state.config.max_concurrent_executions;
    let inputs_json = serde_json::to_value(&values).map_err(|e| AppError::Internal(e.into()))?;
    let crew_for_tx = crew.clone();
    let mut conn = state.pool.get().await?;
    let row = conn
        .transaction::<_, AppError, _>(async move |conn| {
            executions::service::lock_user(conn, user_id).await?;
            // The crew must still exist, and stays until the run is stored (deleteCrew takes
            // the row FOR UPDATE, so it waits, then sees the run and answers CONFLICT).
            let present = crews::table
                .filter(crews::id.eq(crew_for_tx.id))
                .filter(crews::user_id.eq(user_id))
                .select(crews::id)
                .for_key_share()
                .first::<Uuid>(conn)
                .await
                .optional()?;
            if present.is_none() {
                return Err(not_found());
            }
            let crews_running: i64 = crew_runs::table
                .filter(crew_runs::user_id.eq(user_id))
                .filter(crew_runs::status.eq_any(CrewRunStatus::UNFINISHED))
                .count()
                .get_result(conn)
                .await?;
            let running =
                executions::service::unfinished_count(conn, user_id).await? + crews_running;
            if running >= cap {
                return Err(AppError::RateLimited {
                    retry_after_secs: 1,
                    reason: Some(format!(
                        "you already have {running} runs and crew runs in progress (the limit \
                         is {cap}): wait for one to finish"
                    )),
                });
            }
            Ok(diesel::insert_into(crew_runs::table)
                .values((
                    crew_runs::id.eq(Uuid::now_v7()),
                    crew_runs::user_id.eq(user_id),
                    crew_runs::crew_id.eq(Some(crew_for_tx.id)),
                    crew_runs::crew_name.eq(&crew_for_tx.name),
                    crew_runs::process.eq(crew_for_tx.process),
                    crew_runs::inputs.eq(&inputs_json),
                ))
                .returning(CrewRunRow::as_returning())
                .get_result(conn)
                .await?)
        })
        .await?;
    drop(conn);
    tracing::info!(crew_run.id = %row.id, crew.id = %crew.id, user.id = %user_id, "crew run queued");
    runner::spawn(
        state.clone(),
        runner::Plan {
            crew_run_id: row.id,
            user_id,
            process: crew.process,
            tasks: planned,
            members,
            manager,
        },
    );
    Ok(row)
}

/// Stops one of the viewer's crew runs: its running step is cancelled (output so far kept) and
/// the rest skipped; the crew run ends CANCELLED. A finished one is returned unchanged. Waits
/// briefly for the end so the answer usually shows CANCELLED.
pub async fn cancel(state: &AppState, viewer: &Viewer, id: Uuid) -> AppResult<CrewRunRow> {
    let mut conn = state.pool.get().await?;
    let run = model::find_run_owned(&mut conn, viewer.id(), id)
        .await?
        .ok_or_else(run_not_found)?;
    if run.status.is_finished() {
        return Ok(run);
    }
    diesel::update(crew_runs::table.find(id))
        .set(crew_runs::cancel_requested.eq(true))
        .execute(&mut conn)
        .await?;
    drop(conn);
    // The coordinator takes cancels by id like a runner does (on whichever instance).
    executions::service::signal_cancel(state, id).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let current = get_run(state, viewer, id).await?;
        if current.status.is_finished() || tokio::time::Instant::now() >= deadline {
            return Ok(current);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn placeholders_are_names_in_single_braces_and_other_braces_are_text() {
        assert_eq!(
            placeholders("Research {topic} for {audience}, then {topic} again"),
            ["topic", "audience"]
        );
        assert_eq!(
            placeholders(r#"JSON {"a": 1} {not a name} {x1} {_y} {1z} { {ok}"#),
            ["x1", "_y", "ok"]
        );
        assert!(placeholders("no braces").is_empty());
    }

    #[test]
    fn interpolation_is_one_pass_so_values_are_never_expanded() {
        let values = inputs(&[("a", "{b}{b}"), ("b", "boom")]);
        assert_eq!(
            interpolate("{a} and {b} and {c}", &values),
            "{b}{b} and boom and {c}"
        );
        assert_eq!(
            interpolate(r#"{"json": {a}}"#, &values),
            r#"{"json": {b}{b}}"#
        );
    }
}
