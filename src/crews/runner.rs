//! The crew runner: one coordinator task per crew run. Every step is an ordinary run
//! (`executions::service::start_crew_step`), so streaming, replay, cancel, timeout, recovery,
//! usage and cost hold for each; the coordinator only decides what runs next and with which
//! input, waits for it, and ends the crew run.
//!
//! - **SEQUENTIAL**: the tasks in order, each by its agent; a task's input is its description,
//!   the expected output, and the outputs of the earlier tasks it receives (by default the one
//!   just before). The last task's output is the crew's. A step that fails, times out or is
//!   cancelled ends the crew run (FAILED or CANCELLED) and the rest is skipped.
//! - **HIERARCHICAL**: one run of the manager, whose input lists the tasks and the coworkers and
//!   who gets a `delegate_task` tool; each delegation is a run of the chosen member, waited for,
//!   whose output is the tool's result (at most `AGENTRY_CREW_MAX_DELEGATIONS` per crew run).
//!   The manager's answer is the crew's.
//!
//! A cancel reaches the coordinator by the crew run's id (locally or by NOTIFY); it cancels the
//! running step and ends the crew run CANCELLED. The coordinator beats the crew run's heartbeat
//! while it waits, so another instance can end a crew run whose process died ([`recover_stale`]).

use std::{sync::Arc, time::Duration};

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    agents::model::AgentRow,
    crews::model::{CrewProcess, CrewRunStatus},
    db::schema::crew_runs,
    error::AppError,
    executions::{
        model::{CrewRole, ExecutionRow, ExecutionStatus},
        service::{self as executions, CrewLink},
    },
    llm::provider::ToolSpec,
    state::AppState,
    tools::{Extension, Outcome},
};

/// Most characters of a task's own text (description and expected output, inputs filled in);
/// `runCrew` refuses longer ones.
pub const MAX_TASK_TEXT_CHARS: usize = 12_000;
/// Characters of the earlier outputs a task's input may carry on top of its own text, so the
/// whole stays within the run input limit.
const CONTEXT_BUDGET: usize = executions::MAX_INPUT_CHARS - MAX_TASK_TEXT_CHARS - 1_000;

/// The error recorded on a crew run whose coordinator stopped.
pub const DEAD_COORDINATOR: &str = "the server running this crew run stopped before it finished";

/// One task of a crew run, ready to run: placeholders filled in, agent loaded.
#[derive(Debug, Clone)]
pub struct PlannedTask {
    /// Its index in the crew's tasks.
    pub index: usize,
    /// What to do.
    pub description: String,
    /// What a good result looks like.
    pub expected_output: String,
    /// Who does it (a hint to the manager in a HIERARCHICAL crew).
    pub agent: Option<AgentRow>,
    /// Earlier tasks whose outputs it receives.
    pub context: Vec<usize>,
}

/// What a crew run does, decided when it was accepted.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The crew run.
    pub crew_run_id: Uuid,
    /// Its owner.
    pub user_id: Uuid,
    /// How the tasks are worked through.
    pub process: CrewProcess,
    /// The tasks, in order.
    pub tasks: Vec<PlannedTask>,
    /// The members (the coworkers a manager may delegate to).
    pub members: Vec<AgentRow>,
    /// The manager of a HIERARCHICAL crew.
    pub manager: Option<AgentRow>,
}

/// How a crew run ended.
enum Ending {
    Succeeded(String),
    Failed(String),
    Cancelled,
    /// Someone else ended the crew run (recovery declared it dead): write nothing more.
    Lost,
}

/// Starts the coordinator of a freshly accepted crew run.
pub fn spawn(state: AppState, plan: Plan) {
    tokio::spawn(async move {
        let id = plan.crew_run_id;
        let mut cancelled = state.hub.register_runner(id);
        let ending = match start(&state, id).await {
            Ok(true) => coordinate(&state, &plan, &mut cancelled).await,
            Ok(false) => Ending::Cancelled,
            Err(e) => Ending::Failed(format!("the crew run could not start: {}", e.message())),
        };
        let ending = match ending {
            Ending::Cancelled if state.shutting_down() => {
                Ending::Failed("the server shut down during the crew run: start it again".into())
            }
            other => other,
        };
        if matches!(ending, Ending::Lost) {
            tracing::warn!(crew_run.id = %id, "crew run ended elsewhere (recovery): coordinator stops");
        } else if let Err(e) = finish(&state, id, ending).await {
            // Recovery ends it when the heartbeat stops.
            tracing::error!(crew_run.id = %id, error = ?e, "crew run could not be ended");
        }
        state.hub.unregister_runner(id);
    });
}

/// Marks the crew run RUNNING; false when a cancel came first.
async fn start(state: &AppState, id: Uuid) -> Result<bool, AppError> {
    let mut conn = state.pool.get().await?;
    let cancel_requested: Option<bool> = diesel::update(
        crew_runs::table
            .filter(crew_runs::id.eq(id))
            .filter(crew_runs::status.eq(CrewRunStatus::Queued)),
    )
    .set((
        crew_runs::status.eq(CrewRunStatus::Running),
        crew_runs::started_at.eq(diesel::dsl::now),
        crew_runs::heartbeat_at.eq(diesel::dsl::now),
    ))
    .returning(crew_runs::cancel_requested)
    .get_result(&mut conn)
    .await
    .optional()?;
    drop(conn);
    // Watchers also re-read on their own now and then: a failed announcement only delays them.
    let _ = executions::announce(state, id).await;
    Ok(cancel_requested == Some(false))
}

/// Ends the crew run (if nobody else did) and tells its watchers.
async fn finish(state: &AppState, id: Uuid, ending: Ending) -> anyhow::Result<()> {
    let (status, output, error) = match ending {
        Ending::Succeeded(output) => (CrewRunStatus::Succeeded, output, None),
        Ending::Failed(error) => (CrewRunStatus::Failed, String::new(), Some(error)),
        Ending::Cancelled => (CrewRunStatus::Cancelled, String::new(), None),
        Ending::Lost => return Ok(()),
    };
    let mut conn = state.pool.get().await?;
    diesel::update(
        crew_runs::table
            .filter(crew_runs::id.eq(id))
            .filter(crew_runs::status.eq_any(CrewRunStatus::UNFINISHED)),
    )
    .set((
        crew_runs::status.eq(status),
        crew_runs::output.eq(output),
        crew_runs::error.eq(error),
        crew_runs::finished_at.eq(diesel::dsl::now),
    ))
    .execute(&mut conn)
    .await?;
    drop(conn);
    let _ = executions::announce(state, id).await;
    tracing::info!(crew_run.id = %id, status = status.as_str(), "crew run ended");
    Ok(())
}

async fn coordinate(
    state: &AppState,
    plan: &Plan,
    cancelled: &mut tokio::sync::watch::Receiver<bool>,
) -> Ending {
    match (plan.process, &plan.manager) {
        (CrewProcess::Hierarchical, Some(manager)) => {
            hierarchical(state, plan, manager, cancelled).await
        }
        _ => sequential(state, plan, cancelled).await,
    }
}

/// The tasks in order, each output kept for the tasks that receive it.
async fn sequential(
    state: &AppState,
    plan: &Plan,
    cancelled: &mut tokio::sync::watch::Receiver<bool>,
) -> Ending {
    let mut outputs: Vec<String> = Vec::with_capacity(plan.tasks.len());
    for task in &plan.tasks {
        if *cancelled.borrow() || state.shutting_down() {
            return Ending::Cancelled;
        }
        let Some(agent) = &task.agent else {
            return Ending::Failed(format!("task {} has no agent", task.index));
        };
        let earlier: Vec<(usize, &str)> = task
            .context
            .iter()
            .filter_map(|i| outputs.get(*i).map(|o| (*i, o.as_str())))
            .collect();
        let input = task_input(task, &earlier);
        let link = CrewLink {
            crew_run_id: plan.crew_run_id,
            role: CrewRole::Task,
            task: i32::try_from(task.index).ok(),
        };
        let run = match step(state, plan, agent, &input, link, None, cancelled).await {
            Ok(run) => run,
            Err(ending) => return ending,
        };
        match run.status {
            ExecutionStatus::Succeeded => outputs.push(run.output),
            ExecutionStatus::Cancelled => return Ending::Cancelled,
            status => {
                return Ending::Failed(format!(
                    "task {} (agent `{}`) ended {}: {}",
                    task.index,
                    agent.name,
                    status.as_str(),
                    run.error.as_deref().unwrap_or("no reason given")
                ));
            }
        }
    }
    Ending::Succeeded(outputs.pop().unwrap_or_default())
}

/// One run of the manager, with the delegation tool.
async fn hierarchical(
    state: &AppState,
    plan: &Plan,
    manager: &AgentRow,
    cancelled: &mut tokio::sync::watch::Receiver<bool>,
) -> Ending {
    let delegation = Arc::new(Delegation {
        state: state.clone(),
        plan: plan.clone(),
        made: tokio::sync::Mutex::new(0),
        max: state.config.crew_max_delegations,
    });
    let link = CrewLink {
        crew_run_id: plan.crew_run_id,
        role: CrewRole::Manager,
        task: None,
    };
    let input = manager_input(plan);
    let extension: Arc<dyn Extension> = delegation;
    match step(
        state,
        plan,
        manager,
        &input,
        link,
        Some(extension),
        cancelled,
    )
    .await
    {
        Ok(run) => match run.status {
            ExecutionStatus::Succeeded => Ending::Succeeded(run.output),
            ExecutionStatus::Cancelled => Ending::Cancelled,
            status => Ending::Failed(format!(
                "the manager (agent `{}`) ended {}: {}",
                manager.name,
                status.as_str(),
                run.error.as_deref().unwrap_or("no reason given")
            )),
        },
        Err(ending) => ending,
    }
}

/// Starts one step, tells the crew run's watchers, and waits for the step to end while
/// beating the crew run's heartbeat; a cancel of the crew run cancels the step.
async fn step(
    state: &AppState,
    plan: &Plan,
    agent: &AgentRow,
    input: &str,
    link: CrewLink,
    extension: Option<Arc<dyn Extension>>,
    cancelled: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<ExecutionRow, Ending> {
    let what = match link.task {
        Some(i) => format!("task {i}"),
        None => "the manager".to_owned(),
    };
    let (run, runner) =
        executions::start_crew_step(state, plan.user_id, agent.id, input, link, extension)
            .await
            .map_err(|e| {
                Ending::Failed(format!(
                    "{what} (agent `{}`) could not start: {}",
                    agent.name,
                    e.message()
                ))
            })?;
    let _ = executions::announce(state, plan.crew_run_id).await;
    wait_for(state, plan.crew_run_id, run.id, runner, Some(cancelled)).await
}

/// Waits for the runner of step `id` to end (beating the crew run's heartbeat meanwhile) and
/// reads how it ended. A cancel of the crew run (when `cancelled` is given) cancels the step
/// first.
async fn wait_for(
    state: &AppState,
    crew_run_id: Uuid,
    id: Uuid,
    mut runner: tokio::task::JoinHandle<()>,
    mut cancelled: Option<&mut tokio::sync::watch::Receiver<bool>>,
) -> Result<ExecutionRow, Ending> {
    let every = Duration::from_secs(state.config.execution_heartbeat_secs);
    let mut beat = tokio::time::interval(every);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cancelling = false;
    let mut lost = false;
    loop {
        tokio::select! {
            _ = &mut runner => break,
            () = until_cancelled(cancelled.as_deref_mut()), if !cancelling => {
                cancelling = true;
                if let Err(e) = executions::cancel_step(state, id).await {
                    // Tried again shortly: a step left running would keep spending.
                    tracing::warn!(execution.id = %id, error = %e.message(), "could not cancel a crew step");
                    cancelling = false;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            _ = beat.tick() => match heartbeat(state, crew_run_id).await {
                // Ended elsewhere (recovery): stop the step, and stop.
                Ok(None) => {
                    lost = true;
                    if !cancelling {
                        cancelling = true;
                        let _ = executions::cancel_step(state, id).await;
                    }
                }
                // A cancel whose notification was missed (the listener was reconnecting).
                Ok(Some(true)) if !cancelling && cancelled.is_some() => {
                    cancelling = true;
                    let _ = executions::cancel_step(state, id).await;
                }
                Ok(Some(_)) => {}
                Err(e) => {
                    tracing::warn!(crew_run.id = %crew_run_id, error = %e, "crew run heartbeat failed");
                }
            },
        }
    }
    if lost {
        return Err(Ending::Lost);
    }
    let _ = executions::announce(state, crew_run_id).await;
    let run = executions::step(state, id).await.map_err(|e| {
        Ending::Failed(format!(
            "the step's result could not be read: {}",
            e.message()
        ))
    })?;
    if cancelling && !matches!(run.status, ExecutionStatus::Succeeded) {
        return Err(Ending::Cancelled);
    }
    Ok(run)
}

/// Resolves when the switch turns true; never without one.
async fn until_cancelled(switch: Option<&mut tokio::sync::watch::Receiver<bool>>) {
    match switch {
        Some(rx) => crate::state::until_set(rx).await,
        None => std::future::pending().await,
    }
}

/// Beats the crew run's heartbeat; whether a cancel was requested, or `None` when the crew run
/// has ended meanwhile (recovery declared it dead).
async fn heartbeat(state: &AppState, id: Uuid) -> anyhow::Result<Option<bool>> {
    let mut conn = state.pool.get().await?;
    Ok(diesel::update(
        crew_runs::table
            .filter(crew_runs::id.eq(id))
            .filter(crew_runs::status.eq_any(CrewRunStatus::UNFINISHED)),
    )
    .set(crew_runs::heartbeat_at.eq(diesel::dsl::now))
    .returning(crew_runs::cancel_requested)
    .get_result(&mut conn)
    .await
    .optional()?)
}

/// `text` cut to at most `max` characters, saying so (the mark included).
fn cut_chars(text: &str, max: usize) -> String {
    const MARK: &str = "\n[… cut]";
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let kept: String = text
        .chars()
        .take(max.saturating_sub(MARK.chars().count()))
        .collect();
    format!("{kept}{MARK}")
}

/// A task's input: what to do, what to deliver, and what the earlier tasks produced.
pub fn task_input(task: &PlannedTask, earlier: &[(usize, &str)]) -> String {
    let mut input = format!(
        "{}\n\nExpected output: {}",
        task.description, task.expected_output
    );
    if !earlier.is_empty() {
        let share = CONTEXT_BUDGET / earlier.len();
        input.push_str("\n\nContext from earlier tasks:");
        for (index, output) in earlier {
            input.push_str(&format!(
                "\n\n## Output of task {index}\n{}",
                cut_chars(output, share)
            ));
        }
    }
    input
}

/// The manager's input: the tasks to get done and the coworkers to delegate them to.
pub fn manager_input(plan: &Plan) -> String {
    let mut input = String::from(
        "You manage a crew. Get the tasks below done by delegating each to the coworker best \
         suited to it with the delegate_task tool (give them everything they need: they see \
         only what you send), check their work, and then answer with the final result.\n\n\
         Coworkers:",
    );
    for member in &plan.members {
        input.push_str(&format!(
            "\n- {}: {}. Goal: {}",
            member.name, member.role, member.goal
        ));
    }
    input.push_str("\n\nTasks:");
    for task in &plan.tasks {
        input.push_str(&format!(
            "\n\n{}. {}\nExpected output: {}",
            task.index + 1,
            task.description,
            task.expected_output
        ));
        if let Some(agent) = &task.agent {
            input.push_str(&format!("\nSuggested coworker: {}", agent.name));
        }
    }
    cut_chars(&input, executions::MAX_INPUT_CHARS)
}

/// The manager's delegation tool: each call is a run of the chosen member, waited for. One
/// delegation at a time (a turn's calls queue up), so a crew run has at most two runs going —
/// the manager and one member — whatever the manager asks for at once.
struct Delegation {
    state: AppState,
    plan: Plan,
    /// Delegations started so far; held while one runs.
    made: tokio::sync::Mutex<u32>,
    max: u32,
}

/// Name of the delegation function.
pub const DELEGATE_TASK: &str = "delegate_task";

/// Cancels a delegated run if the manager's tool call is dropped before it ends (the manager
/// was cancelled or timed out), so no member keeps working for nobody.
struct StepGuard {
    state: AppState,
    id: Uuid,
    done: bool,
}

impl Drop for StepGuard {
    fn drop(&mut self) {
        if !self.done {
            let (state, id) = (self.state.clone(), self.id);
            tokio::spawn(async move {
                let _ = executions::cancel_step(&state, id).await;
            });
        }
    }
}

#[async_trait::async_trait]
impl Extension for Delegation {
    fn specs(&self) -> Vec<ToolSpec> {
        let names: Vec<&str> = self.plan.members.iter().map(|m| m.name.as_str()).collect();
        vec![ToolSpec {
            name: DELEGATE_TASK,
            description: "Delegate a task to one of your coworkers and get their answer. They \
                          know nothing but what you send: put every detail and all the context \
                          they need in `task` and `context`.",
            parameters: json!({
                "type": "object",
                "properties": {
                    "coworker": {"type": "string", "enum": names, "description": "Who does the task."},
                    "task": {"type": "string", "description": "What to do, completely."},
                    "context": {"type": "string", "description": "Everything they need to know."}
                },
                "required": ["coworker", "task"]
            }),
        }]
    }

    async fn call(&self, _name: &str, arguments: &Value) -> Outcome {
        let text = |name: &str| arguments.get(name).and_then(Value::as_str).map(str::trim);
        let coworker = text("coworker").ok_or("the argument `coworker` (a string) is missing")?;
        let task = text("task")
            .filter(|t| !t.is_empty())
            .ok_or("the argument `task` (a string) is missing")?;
        let member = self
            .plan
            .members
            .iter()
            .find(|m| m.name.eq_ignore_ascii_case(coworker))
            .ok_or_else(|| {
                let names: Vec<&str> = self.plan.members.iter().map(|m| m.name.as_str()).collect();
                format!(
                    "there is no coworker named `{coworker}`; the coworkers are: {}",
                    names.join(", ")
                )
            })?;
        let mut made = self.made.lock().await;
        if *made >= self.max {
            return Err(format!(
                "the crew's delegation limit ({}) is reached: answer with what you have",
                self.max
            ));
        }
        let mut input = task.to_owned();
        if let Some(context) = text("context").filter(|c| !c.is_empty()) {
            input.push_str(&format!("\n\nContext:\n{context}"));
        }
        let input = cut_chars(&input, executions::MAX_INPUT_CHARS);
        let link = CrewLink {
            crew_run_id: self.plan.crew_run_id,
            role: CrewRole::Delegation,
            task: None,
        };
        let (run, runner) = executions::start_crew_step(
            &self.state,
            self.plan.user_id,
            member.id,
            &input,
            link,
            None,
        )
        .await
        .map_err(|e| format!("the coworker could not start: {}", e.message()))?;
        *made += 1;
        let mut guard = StepGuard {
            state: self.state.clone(),
            id: run.id,
            done: false,
        };
        let _ = executions::announce(&self.state, self.plan.crew_run_id).await;
        let ended = wait_for(&self.state, self.plan.crew_run_id, run.id, runner, None).await;
        guard.done = true;
        match ended {
            Ok(run) if run.status == ExecutionStatus::Succeeded => Ok(run.output),
            Ok(run) => Err(format!(
                "{}'s run ended {}: {}",
                member.name,
                run.status.as_str(),
                run.error.as_deref().unwrap_or("no reason given")
            )),
            Err(_) => Err(format!("{}'s result could not be read", member.name)),
        }
    }
}

#[derive(diesel::QueryableByName)]
struct Recovered {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
}

/// Ends every unfinished crew run whose coordinator has been silent for longer than `stale`
/// (its process died) FAILED; returns their ids. Their steps are ended by the runs' own
/// recovery.
pub async fn recover_stale(
    conn: &mut AsyncPgConnection,
    stale: Duration,
) -> anyhow::Result<Vec<Uuid>> {
    let rows: Vec<Recovered> = diesel::sql_query(
        "UPDATE crew_runs SET status = 'FAILED', error = $2, finished_at = now() \
         WHERE id IN (SELECT id FROM crew_runs \
                      WHERE status IN ('QUEUED', 'RUNNING') \
                        AND heartbeat_at < now() - make_interval(secs => $1) \
                      ORDER BY heartbeat_at LIMIT 100 FOR UPDATE SKIP LOCKED) \
         RETURNING id",
    )
    .bind::<diesel::sql_types::Double, _>(stale.as_secs_f64())
    .bind::<diesel::sql_types::Text, _>(DEAD_COORDINATOR)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// Checks for dead crew runs every heartbeat period until the process ends.
pub fn spawn_recovery(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = Duration::from_secs(state.config.execution_heartbeat_secs);
        let stale = every * crate::executions::recovery::MISSED_HEARTBEATS as u32;
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let result = async {
                let mut conn = state.pool.get().await?;
                recover_stale(&mut conn, stale).await
            }
            .await;
            match result {
                Ok(ids) => {
                    for id in ids {
                        tracing::warn!(crew_run.id = %id, "crew run declared dead (stale heartbeat): FAILED");
                        let _ = executions::announce(&state, id).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "crew recovery pass failed"),
            }
        }
    })
}
