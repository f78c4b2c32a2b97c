//! GraphQL for crews: define them (members, tasks, process), run them with inputs, follow a
//! crew run over one subscription, cancel it, list crews and crew runs. Thin: parse, authorize,
//! call the service.

use std::sync::Arc;

use async_graphql::{Context, ID, InputObject, Json, Object, Subscription};
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};

use crate::{
    agents::graphql::Agent,
    crews::{
        live::{self, CrewEvent},
        model::{CrewProcess, CrewRow, CrewRunRow, CrewRunStatus, TaskSpec},
        service::{self, CrewInput as ServiceCrewInput, TaskInput},
        templates::{self, AgentTemplate, TaskTemplate, TemplateKind},
    },
    error::AppError,
    executions::{
        graphql::{Execution, ExecutionEvent, run_columns},
        model::CrewRole,
    },
    graphql::{
        guards::RoleGuard,
        loaders::Loaders,
        pagination::{Page, PageOf},
        parse_id, request_context, state,
    },
};

/// Steps of a crew run listed by `CrewRun.executions` at most.
const MAX_STEPS_LISTED: i64 = 200;

/// A crew: some of your agents and an ordered list of tasks they work through.
pub struct Crew(pub CrewRow);

#[Object]
impl Crew {
    /// Stable id.
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// Unique among your crews.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Free text.
    async fn description(&self) -> &str {
        &self.0.description
    }
    /// How the tasks are worked through.
    async fn process(&self) -> CrewProcess {
        self.0.process
    }
    /// The members, in the order given (an agent deleted since is left out).
    async fn agents(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Agent>> {
        let found = ctx
            .data::<Loaders>()?
            .agents
            .load_many(self.0.agent_ids.iter().copied())
            .await?;
        Ok(self
            .0
            .agent_ids
            .iter()
            .filter_map(|id| found.get(id).cloned().map(Agent::single))
            .collect())
    }
    /// The manager of a HIERARCHICAL crew.
    async fn manager(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Agent>> {
        let Some(id) = self.0.manager_agent_id else {
            return Ok(None);
        };
        Agent::by_id(ctx, id).await
    }
    /// The tasks, in order.
    async fn tasks(&self) -> Vec<CrewTask> {
        self.0
            .task_list()
            .into_iter()
            .enumerate()
            .map(|(index, spec)| CrewTask { index, spec })
            .collect()
    }
    /// The inputs `runCrew` needs: the `{name}` placeholders of the tasks, in order.
    async fn inputs(&self) -> Vec<String> {
        service::inputs_of(&self.0.task_list())
    }
    /// When it was created.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// When it last changed.
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
    /// Its runs, newest first.
    #[graphql(complexity = "first.unwrap_or(20).max(0) as usize * child_complexity")]
    async fn runs(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<PageOf<CrewRun>> {
        let page = Page::of(ctx, first, after)?;
        if page.after.is_none() {
            // The first page (a list of crews with their latest runs) is batched.
            let rows = ctx
                .data::<Loaders>()?
                .crew_runs
                .load_one((self.0.id, page.fetch_limit()))
                .await?
                .unwrap_or_default();
            return Ok(page.connection(rows, |r| r.id, CrewRun));
        }
        let viewer = request_context(ctx)?.viewer()?;
        let rows = service::runs_page(
            state(ctx)?,
            viewer,
            Some(self.0.id),
            page.after,
            page.fetch_limit(),
        )
        .await?;
        Ok(page.connection(rows, |r| r.id, CrewRun))
    }
}

/// One task of a crew.
pub struct CrewTask {
    index: usize,
    spec: TaskSpec,
}

#[Object]
impl CrewTask {
    /// Its place in the crew's tasks, from 0.
    async fn index(&self) -> i32 {
        i32::try_from(self.index).unwrap_or(i32::MAX)
    }
    /// What to do; `{name}` placeholders take the run's inputs.
    async fn description(&self) -> &str {
        &self.spec.description
    }
    /// What a good result looks like.
    async fn expected_output(&self) -> &str {
        &self.spec.expected_output
    }
    /// Who does it (in a HIERARCHICAL crew, a suggestion to the manager).
    async fn agent(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Agent>> {
        let Some(id) = self.spec.agent_id else {
            return Ok(None);
        };
        Agent::by_id(ctx, id).await
    }
    /// Indexes of the earlier tasks whose outputs it receives.
    async fn context(&self) -> Vec<i32> {
        self.spec
            .context_of(self.index)
            .into_iter()
            .filter_map(|i| i32::try_from(i).ok())
            .collect()
    }
}

/// A run of a crew: its steps are ordinary runs (`executions`).
pub struct CrewRun(pub CrewRunRow);

#[Object]
impl CrewRun {
    /// Stable id.
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// The crew (null once deleted).
    async fn crew_id(&self) -> Option<ID> {
        self.0.crew_id.map(|id| ID(id.to_string()))
    }
    /// The crew's name when it ran.
    async fn crew_name(&self) -> &str {
        &self.0.crew_name
    }
    /// The crew's process when it ran.
    async fn process(&self) -> CrewProcess {
        self.0.process
    }
    /// Where it is.
    async fn status(&self) -> CrewRunStatus {
        self.0.status
    }
    /// The inputs it was given.
    async fn inputs(&self) -> Json<&serde_json::Value> {
        Json(&self.0.inputs)
    }
    /// The final answer (once SUCCEEDED): the last task's output, or the manager's.
    async fn output(&self) -> &str {
        &self.0.output
    }
    /// Why it failed.
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    /// When it was accepted.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// When it started.
    async fn started_at(&self) -> Option<DateTime<Utc>> {
        self.0.started_at
    }
    /// When it ended.
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.0.finished_at
    }
    /// Its steps (tasks, the manager, delegations), in the order they started.
    async fn executions(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Execution>> {
        let rows = ctx
            .data::<Loaders>()?
            .crew_run_executions
            .load_one((self.0.id, MAX_STEPS_LISTED, run_columns(ctx, false)))
            .await?
            .unwrap_or_default();
        // Read newest first, listed oldest first.
        Ok(rows.iter().rev().map(Execution).collect())
    }
}

crate::text_enum! {
    /// What a crew run event says.
    pub enum CrewRunEventKind {
        /// A step started (`execution`, `role`, `taskIndex`).
        StepStarted => "STEP_STARTED",
        /// An event of a step (`event`, `executionId`, `role`, `taskIndex`).
        StepEvent => "STEP_EVENT",
        /// Terminal: the crew run succeeded (`crewRun.output` is the final answer).
        Succeeded => "SUCCEEDED",
        /// Terminal: the crew run failed (`crewRun.error`).
        Failed => "FAILED",
        /// Terminal: the crew run was cancelled; the rest was skipped.
        Cancelled => "CANCELLED",
    }
}

/// One item of a crew run's live stream.
pub struct CrewRunEvent(CrewEvent);

#[Object]
impl CrewRunEvent {
    /// What happened.
    async fn kind(&self) -> CrewRunEventKind {
        match &self.0 {
            CrewEvent::StepStarted(_) => CrewRunEventKind::StepStarted,
            CrewEvent::Step { .. } => CrewRunEventKind::StepEvent,
            CrewEvent::Ended(run) => match run.status {
                CrewRunStatus::Succeeded => CrewRunEventKind::Succeeded,
                CrewRunStatus::Cancelled => CrewRunEventKind::Cancelled,
                _ => CrewRunEventKind::Failed,
            },
        }
    }
    /// The step the item is about (null on the terminal item).
    async fn execution_id(&self) -> Option<ID> {
        match &self.0 {
            CrewEvent::StepStarted(run) => Some(ID(run.id.to_string())),
            CrewEvent::Step { event, .. } => Some(ID(event.execution_id.to_string())),
            CrewEvent::Ended(_) => None,
        }
    }
    /// The step's part in the crew run.
    async fn role(&self) -> Option<CrewRole> {
        match &self.0 {
            CrewEvent::StepStarted(run) => run.crew_role,
            CrewEvent::Step { role, .. } => *role,
            CrewEvent::Ended(_) => None,
        }
    }
    /// The crew task the step works on (TASK steps).
    async fn task_index(&self) -> Option<i32> {
        match &self.0 {
            CrewEvent::StepStarted(run) => run.crew_task,
            CrewEvent::Step { task, .. } => *task,
            CrewEvent::Ended(_) => None,
        }
    }
    /// The step that started (STEP_STARTED).
    async fn execution(&self) -> Option<Execution> {
        match &self.0 {
            CrewEvent::StepStarted(run) => Some(Execution::own(run.clone())),
            _ => None,
        }
    }
    /// The step's event (STEP_EVENT), as `executionEvents` sends it.
    async fn event(&self) -> Option<ExecutionEvent> {
        match &self.0 {
            CrewEvent::Step { event, .. } => Some(ExecutionEvent(Arc::clone(event))),
            _ => None,
        }
    }
    /// The crew run as it ended (terminal items).
    async fn crew_run(&self) -> Option<CrewRun> {
        match &self.0 {
            CrewEvent::Ended(run) => Some(CrewRun(run.clone())),
            _ => None,
        }
    }
}

/// One task of a crew, as given to `createCrew` / `updateCrew`.
#[derive(InputObject)]
pub struct CrewTaskInput {
    /// What to do; `{name}` placeholders take `runCrew`'s inputs (up to 8000 characters).
    pub description: String,
    /// What a good result looks like (up to 2000 characters).
    pub expected_output: String,
    /// Which member does it: required in a SEQUENTIAL crew, a suggestion in a HIERARCHICAL one.
    pub agent_id: Option<ID>,
    /// Indexes of earlier tasks whose outputs it receives; omitted: the task just before.
    pub context: Option<Vec<i32>>,
}

/// A crew, as given to `createCrew` / `updateCrew` (replaced whole).
#[derive(InputObject)]
pub struct CrewInput {
    /// Unique among your crews (1–100 characters).
    pub name: String,
    /// Free text (up to 2000 characters).
    pub description: Option<String>,
    /// SEQUENTIAL (default) or HIERARCHICAL.
    #[graphql(default_with = "CrewProcess::Sequential")]
    pub process: CrewProcess,
    /// The members: agents of yours (1–20).
    pub agent_ids: Vec<ID>,
    /// The manager of a HIERARCHICAL crew: any agent of yours.
    pub manager_agent_id: Option<ID>,
    /// The tasks, in order (1–20).
    pub tasks: Vec<CrewTaskInput>,
}

impl From<CrewInput> for ServiceCrewInput {
    fn from(input: CrewInput) -> Self {
        Self {
            name: input.name,
            description: input.description,
            process: input.process,
            agent_ids: input.agent_ids.into_iter().map(|id| id.0).collect(),
            manager_agent_id: input.manager_agent_id.map(|id| id.0),
            tasks: input
                .tasks
                .into_iter()
                .map(|t| TaskInput {
                    description: t.description,
                    expected_output: t.expected_output,
                    agent_id: t.agent_id.map(|id| id.0),
                    context: t.context,
                })
                .collect(),
        }
    }
}

/// A built-in template: one agent, or a crew with its agents.
pub struct Template(&'static templates::Template);

#[Object]
impl Template {
    /// Stable id, for `instantiateTemplate`.
    async fn id(&self) -> ID {
        ID(self.0.id.to_owned())
    }
    /// One agent or a crew.
    async fn kind(&self) -> TemplateKind {
        self.0.kind
    }
    /// Display name.
    async fn name(&self) -> &str {
        self.0.name
    }
    /// What it is for.
    async fn description(&self) -> &str {
        self.0.description
    }
    /// The agents it creates (a crew's members).
    async fn agents(&self) -> Vec<TemplateAgent> {
        self.0.agents.iter().map(TemplateAgent).collect()
    }
    /// A crew's manager (HIERARCHICAL crews).
    async fn manager(&self) -> Option<TemplateAgent> {
        self.0.manager.as_ref().map(TemplateAgent)
    }
    /// A crew's process (null for an agent template).
    async fn process(&self) -> Option<CrewProcess> {
        (self.0.kind == TemplateKind::Crew).then_some(self.0.process)
    }
    /// A crew's tasks, in order.
    async fn tasks(&self) -> Vec<TemplateTask> {
        self.0
            .tasks
            .iter()
            .map(|t| TemplateTask(self.0, t))
            .collect()
    }
    /// The inputs a crew made from it needs in `runCrew`.
    async fn inputs(&self) -> Vec<String> {
        service::inputs_in(
            self.0
                .tasks
                .iter()
                .flat_map(|t| [t.description, t.expected_output]),
        )
    }
}

/// An agent a template creates.
pub struct TemplateAgent(&'static AgentTemplate);

#[Object]
impl TemplateAgent {
    /// Its name (a free variant such as `Writer 2` when yours is taken).
    async fn name(&self) -> &str {
        self.0.name
    }
    /// Its role.
    async fn role(&self) -> &str {
        self.0.role
    }
    /// Its goal.
    async fn goal(&self) -> &str {
        self.0.goal
    }
    /// Its backstory.
    async fn backstory(&self) -> &str {
        self.0.backstory
    }
    /// Its tools.
    async fn tools(&self) -> Vec<crate::tools::AgentTool> {
        self.0.tools.to_vec()
    }
}

/// A task of a crew template.
pub struct TemplateTask(&'static templates::Template, &'static TaskTemplate);

#[Object]
impl TemplateTask {
    /// What to do.
    async fn description(&self) -> &str {
        self.1.description
    }
    /// What a good result looks like.
    async fn expected_output(&self) -> &str {
        self.1.expected_output
    }
    /// The name of the template agent that does it.
    async fn agent_name(&self) -> Option<&str> {
        self.1
            .agent
            .and_then(|i| self.0.agents.get(i))
            .map(|a| a.name)
    }
}

/// What `instantiateTemplate` created.
pub struct TemplateInstance(templates::Instance);

#[Object]
impl TemplateInstance {
    /// The agents (a crew's members, then its manager).
    async fn agents(&self) -> Vec<Agent> {
        self.0.agents.iter().cloned().map(Agent::single).collect()
    }
    /// The crew, for a crew template.
    async fn crew(&self) -> Option<Crew> {
        self.0.crew.clone().map(Crew)
    }
}

/// Crew queries.
#[derive(Default)]
pub struct CrewsQuery;

#[Object]
impl CrewsQuery {
    /// One of your crews; null if it does not exist or is not yours.
    #[graphql(guard = "RoleGuard::USER")]
    async fn crew(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Crew>> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        match service::get(state(ctx)?, viewer, id).await {
            Ok(row) => Ok(Some(Crew(row))),
            Err(AppError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Your crews, newest first.
    #[graphql(
        guard = "RoleGuard::USER",
        complexity = "first.unwrap_or(20).max(0) as usize * child_complexity"
    )]
    async fn crews(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<PageOf<Crew>> {
        let viewer = request_context(ctx)?.viewer()?;
        let page = Page::of(ctx, first, after)?;
        let rows = service::page(state(ctx)?, viewer, page.after, page.fetch_limit()).await?;
        Ok(page.connection(rows, |c| c.id, Crew))
    }

    /// The built-in agent and crew templates (instantiate one with `instantiateTemplate`).
    #[graphql(guard = "RoleGuard::USER")]
    async fn templates(&self) -> Vec<Template> {
        templates::TEMPLATES.iter().map(Template).collect()
    }

    /// One of your crew runs; null if it does not exist or is not yours.
    #[graphql(guard = "RoleGuard::USER")]
    async fn crew_run(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<CrewRun>> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        match service::get_run(state(ctx)?, viewer, id).await {
            Ok(row) => Ok(Some(CrewRun(row))),
            Err(AppError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Your crew runs, newest first; `crewId` keeps one crew's.
    #[graphql(
        guard = "RoleGuard::USER",
        complexity = "first.unwrap_or(20).max(0) as usize * child_complexity"
    )]
    async fn crew_runs(
        &self,
        ctx: &Context<'_>,
        crew_id: Option<ID>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<PageOf<CrewRun>> {
        let viewer = request_context(ctx)?.viewer()?;
        let page = Page::of(ctx, first, after)?;
        let crew_id = crew_id.map(|id| parse_id("crewId", &id)).transpose()?;
        let rows = service::runs_page(state(ctx)?, viewer, crew_id, page.after, page.fetch_limit())
            .await?;
        Ok(page.connection(rows, |r| r.id, CrewRun))
    }
}

/// Crew mutations.
#[derive(Default)]
pub struct CrewsMutation;

#[Object]
impl CrewsMutation {
    /// Creates a crew of your agents. Every rule is checked before anything is stored; errors
    /// name the field (`input.tasks[1].agentId`).
    #[graphql(guard = "RoleGuard::USER")]
    async fn create_crew(
        &self,
        ctx: &Context<'_>,
        input: CrewInput,
    ) -> async_graphql::Result<Crew> {
        let viewer = request_context(ctx)?.viewer()?;
        Ok(Crew(
            service::create(state(ctx)?, viewer, input.into()).await?,
        ))
    }

    /// Replaces one of your crews whole (runs under way keep what they started with).
    #[graphql(guard = "RoleGuard::USER")]
    async fn update_crew(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: CrewInput,
    ) -> async_graphql::Result<Crew> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        Ok(Crew(
            service::update(state(ctx)?, viewer, id, input.into()).await?,
        ))
    }

    /// Deletes one of your crews; its runs stay in the history. CONFLICT while one runs.
    #[graphql(guard = "RoleGuard::USER")]
    async fn delete_crew(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        Ok(service::delete(state(ctx)?, viewer, id).await?)
    }

    /// Runs one of your crews and returns the crew run at once (QUEUED); follow it with the
    /// `crewRunEvents` subscription. `inputs` (a JSON object) fills the tasks' `{name}`
    /// placeholders: a missing or unknown one is BAD_USER_INPUT naming `inputs.<name>`.
    #[graphql(guard = "RoleGuard::USER")]
    async fn run_crew(
        &self,
        ctx: &Context<'_>,
        crew_id: ID,
        inputs: Option<Json<serde_json::Value>>,
    ) -> async_graphql::Result<CrewRun> {
        let viewer = request_context(ctx)?.viewer()?;
        let crew_id = parse_id("crewId", &crew_id)?;
        let inputs = inputs.map_or(serde_json::Value::Null, |i| i.0);
        Ok(CrewRun(
            service::run(state(ctx)?, viewer, crew_id, inputs).await?,
        ))
    }

    /// Creates the agents (and the crew) of a built-in template for you, every agent on your
    /// key `apiKeyId` with `model`, in one step: all or nothing. Names already taken get a
    /// number (`Writer 2`).
    #[graphql(guard = "RoleGuard::USER")]
    async fn instantiate_template(
        &self,
        ctx: &Context<'_>,
        id: ID,
        api_key_id: ID,
        model: String,
    ) -> async_graphql::Result<TemplateInstance> {
        let viewer = request_context(ctx)?.viewer()?;
        let state = state(ctx)?;
        let instance = templates::instantiate(state, viewer, &id, &api_key_id, &model);
        Ok(TemplateInstance(instance.await?))
    }

    /// Stops a crew run: its running step is cancelled (output so far kept), the rest is
    /// skipped, and it ends CANCELLED. On a finished crew run it changes nothing.
    #[graphql(guard = "RoleGuard::USER")]
    async fn cancel_crew_run(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<CrewRun> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        Ok(CrewRun(service::cancel(state(ctx)?, viewer, id).await?))
    }
}

/// Crew subscriptions.
#[derive(Default)]
pub struct CrewsSubscription;

#[Subscription]
impl CrewsSubscription {
    /// A crew run from its beginning, live: for each step (in the order they started)
    /// STEP_STARTED and then that run's events (STEP_EVENT, as `executionEvents` sends them),
    /// and after the last step's terminal event one terminal item (SUCCEEDED with the final
    /// output, FAILED or CANCELLED); then it completes.
    async fn crew_run_events(
        &self,
        ctx: &Context<'_>,
        crew_run_id: ID,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<CrewRunEvent>> + use<>>
    {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("crewRunId", &crew_run_id)?;
        let events = live::events(state(ctx)?, viewer, id).await?;
        Ok(events.map(|event| event.map(CrewRunEvent).map_err(Into::into)))
    }
}
