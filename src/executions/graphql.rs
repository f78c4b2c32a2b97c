//! GraphQL types, queries, mutations and subscriptions for runs. Thin: parse, authorize, call
//! the service or the hub.

use std::sync::Arc;

use async_graphql::{Context, ID, Json, Object, Subscription};
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};

use crate::{
    agents::graphql::Agent,
    db::shared::{SharedRow, SharedRows},
    error::AppError,
    executions::{
        live,
        model::{
            CrewRole, EventKind, EventRow, ExecutionRow, ExecutionStatus, RunColumns, RunFilter,
        },
        service,
    },
    files::graphql::File,
    graphql::{
        eager::Eager,
        guards::RoleGuard,
        pagination::{Page, PageOf},
        parse_id, request_context, selection, state,
    },
    request::Viewer,
    state::AppState,
};

/// One entry of a run's append-only event log.
pub struct ExecutionEvent(pub Arc<EventRow>);

#[Object]
impl ExecutionEvent {
    /// The run.
    async fn execution_id(&self) -> ID {
        ID(self.0.execution_id.to_string())
    }
    /// 1, 2, 3 … without gaps; resume a subscription with `after: <last sequence seen>`.
    async fn sequence(&self) -> i32 {
        self.0.sequence
    }
    /// What happened.
    async fn kind(&self) -> EventKind {
        self.0.kind
    }
    /// Output text, for OUTPUT_DELTA.
    async fn delta(&self) -> Option<&str> {
        self.0.delta.as_deref()
    }
    /// Details: model and provider (STARTED), tokens and cost (USAGE), error (FAILED).
    async fn data(&self) -> Option<Json<&serde_json::Value>> {
        self.0.data.as_ref().map(Json)
    }
    /// When.
    async fn at(&self) -> DateTime<Utc> {
        self.0.at
    }
}

/// A run of an agent: its input, output, status, tokens and cost. The row is its own, or one
/// of a list's shared answer (a page's runs are not copied per run).
pub struct Execution(pub SharedRow<ExecutionRow>);

impl Execution {
    /// A run shown on its own.
    pub fn own(row: ExecutionRow) -> Self {
        Self(row.into())
    }
}

/// `rows` as a connection of runs, each sharing the one answer.
pub fn runs_connection(page: &Page, rows: SharedRows<ExecutionRow>) -> PageOf<Eager<Execution>> {
    page.connection(rows.iter().collect(), |e| e.id, |row| Eager(Execution(row)))
}

#[Object]
impl Execution {
    /// Stable id.
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// The conversation thread the run belongs to, if any.
    async fn thread_id(&self) -> Option<ID> {
        self.0.thread_id.map(|id| ID(id.to_string()))
    }
    /// The crew run the run is a step of, if any.
    async fn crew_run_id(&self) -> Option<ID> {
        self.0.crew_run_id.map(|id| ID(id.to_string()))
    }
    /// Its part in that crew run.
    async fn crew_role(&self) -> Option<CrewRole> {
        self.0.crew_role
    }
    /// The crew task it works on (index from 0), for a TASK step.
    async fn crew_task(&self) -> Option<i32> {
        self.0.crew_task
    }
    /// Files this run wrote with the FILES tool, oldest first.
    async fn files(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<File>> {
        // Awaited from the heap, as below: a run's every field future is as large as its
        // largest field's (see `crate::graphql::eager`), and a page shows hundreds of runs.
        let rows = Box::pin(crate::files::service::of_executions(
            &state(ctx)?.pool,
            &[self.0.id],
        ))
        .await?;
        Ok(rows.into_iter().map(File).collect())
    }
    /// The agent that ran.
    async fn agent(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Agent>> {
        Agent::by_id(ctx, self.0.agent_id).await
    }
    /// Where the run is.
    async fn status(&self) -> ExecutionStatus {
        self.0.status
    }
    /// The user's input.
    async fn input(&self) -> &str {
        &self.0.input
    }
    /// The output so far (all of it once finished; partial after a cancel).
    async fn output(&self) -> &str {
        &self.0.output
    }
    /// Why the run failed or timed out.
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    /// Prompt tokens.
    async fn input_tokens(&self) -> i64 {
        self.0.input_tokens
    }
    /// Completion tokens.
    async fn output_tokens(&self) -> i64 {
        self.0.output_tokens
    }
    /// Cost in USD (kept exactly, in micro-dollars).
    async fn cost_usd(&self) -> f64 {
        self.0.cost_micros as f64 / 1_000_000.0
    }
    /// True when the provider reported no usage (tokens were estimated) or the model has no
    /// price in the pricing table.
    async fn cost_estimated(&self) -> bool {
        self.0.cost_estimated
    }
    /// The model that ran.
    async fn model(&self) -> &str {
        &self.0.model
    }
    /// The provider that ran it.
    async fn provider(&self) -> &str {
        &self.0.provider
    }
    /// When the run was accepted.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// When streaming began.
    async fn started_at(&self) -> Option<DateTime<Utc>> {
        self.0.started_at
    }
    /// When the run ended.
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.0.finished_at
    }
    /// The run's events with `sequence > after`, in order (at most `first`, default 100, up
    /// to 1000).
    #[graphql(complexity = "first.unwrap_or(100).max(0) as usize * child_complexity / 10 + 1")]
    async fn events(
        &self,
        ctx: &Context<'_>,
        after: Option<i32>,
        first: Option<i32>,
    ) -> async_graphql::Result<Vec<Eager<ExecutionEvent>>> {
        let first = first.unwrap_or(100);
        if !(1..=1000).contains(&first) {
            return Err(AppError::bad_input("first", "must be between 1 and 1000").into());
        }
        let rows = Box::pin(service::events_of(
            state(ctx)?,
            &self.0,
            after.unwrap_or(0),
            first,
        ))
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| Eager(ExecutionEvent(Arc::new(row))))
            .collect())
    }
}

/// Which columns the runs a field returns need (see [`RunColumns`]): all only when `input` or
/// `output` is selected on them (in a connection, under `nodes` or `edges { node }`), their
/// summary when no field outside it is, so a list that shows status and cost does not read
/// every run's output, model and error. Fragments and aliases count.
///
/// Every field of `Execution` that reads a column outside the summary is named here; a test
/// asks each field of a listed run alone and compares it with the run read by id.
pub fn run_columns(ctx: &Context<'_>, connection: bool) -> RunColumns {
    const TEXT: [&str; 2] = ["input", "output"];
    const DETAIL: [&str; 7] = [
        "provider",
        "model",
        "error",
        "startedAt",
        "finishedAt",
        "crewRole",
        "crewTask",
    ];
    // The runs are the field's own selection, or a connection's nodes.
    let shows = |fields: &[&str]| {
        if connection {
            selection::shows(ctx, &["nodes"], fields)
                || selection::shows(ctx, &["edges", "node"], fields)
        } else {
            selection::shows(ctx, &[], fields)
        }
    };
    if shows(&TEXT) {
        RunColumns::All
    } else if shows(&DETAIL) {
        RunColumns::NoText
    } else {
        RunColumns::Summary
    }
}

/// A page of the viewer's runs as a connection (shared by `executions` and `Agent.executions`).
pub async fn executions_page(
    state: &AppState,
    viewer: &Viewer,
    of: RunFilter,
    page: Page,
) -> async_graphql::Result<PageOf<Eager<Execution>>> {
    let rows = service::page(state, viewer, of, page.after, page.fetch_limit()).await?;
    Ok(runs_connection(&page, rows.into()))
}

/// Run queries.
#[derive(Default)]
pub struct ExecutionsQuery;

#[Object]
impl ExecutionsQuery {
    /// One of your runs; null if it does not exist or is not yours.
    #[graphql(guard = "RoleGuard::USER")]
    async fn execution(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<Option<Execution>> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        match service::get(state(ctx)?, viewer, id).await {
            Ok(row) => Ok(Some(Execution::own(row))),
            Err(AppError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Your runs, newest first, optionally of one agent and in one status.
    #[graphql(
        guard = "RoleGuard::USER",
        complexity = "first.unwrap_or(20).max(0) as usize * child_complexity"
    )]
    async fn executions(
        &self,
        ctx: &Context<'_>,
        agent_id: Option<ID>,
        status: Option<ExecutionStatus>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<PageOf<Eager<Execution>>> {
        let viewer = request_context(ctx)?.viewer()?;
        let page = Page::of(ctx, first, after)?;
        let agent_id = agent_id.map(|id| parse_id("agentId", &id)).transpose()?;
        let of = RunFilter {
            agent_id,
            status,
            ..RunFilter::default()
        };
        executions_page(state(ctx)?, viewer, of, page).await
    }
}

/// Run mutations.
#[derive(Default)]
pub struct ExecutionsMutation;

#[Object]
impl ExecutionsMutation {
    /// Runs an agent on `input` and returns the run at once (QUEUED); follow it with the
    /// `executionEvents` subscription. Sending the same `idempotencyKey` with the same request
    /// returns the same run instead of starting another. With `threadId` (a thread of yours
    /// with this agent, see `createThread`) the run continues that conversation: the model sees
    /// its earlier turns; CONFLICT while another run of the thread is in progress.
    #[graphql(guard = "RoleGuard::USER")]
    async fn execute_agent(
        &self,
        ctx: &Context<'_>,
        agent_id: ID,
        input: String,
        idempotency_key: Option<String>,
        thread_id: Option<ID>,
    ) -> async_graphql::Result<Execution> {
        let viewer = request_context(ctx)?.viewer()?;
        let agent_id = parse_id("agentId", &agent_id)?;
        let thread_id = thread_id.map(|t| parse_id("threadId", &t)).transpose()?;
        let state = state(ctx)?;
        let run = service::execute(state, viewer, agent_id, input, idempotency_key, thread_id);
        Ok(Execution::own(run.await?))
    }

    /// Stops a run: the provider request is aborted, the output so far is kept, and the run
    /// ends CANCELLED. On a finished run it changes nothing and returns it.
    #[graphql(guard = "RoleGuard::USER")]
    async fn cancel_execution(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<Execution> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        Ok(Execution::own(
            service::cancel(state(ctx)?, viewer, id).await?,
        ))
    }
}

/// Run subscriptions.
#[derive(Default)]
pub struct ExecutionsSubscription;

#[Subscription]
impl ExecutionsSubscription {
    /// A run's events: first those stored with `sequence > after` (all when omitted), then live
    /// ones as they happen, with no gap and no duplicate; completes after the terminal event.
    async fn execution_events(
        &self,
        ctx: &Context<'_>,
        execution_id: ID,
        after: Option<i32>,
    ) -> async_graphql::Result<
        impl Stream<Item = async_graphql::Result<Eager<ExecutionEvent>>> + use<>,
    > {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("executionId", &execution_id)?;
        let events = live::events(state(ctx)?, viewer, id, after.unwrap_or(0)).await?;
        // Eager: each event is resolved once per subscriber, so its plain fields are polled
        // in place rather than as a boxed future each (see `graphql::eager`).
        Ok(events.map(|event| {
            event
                .map(|row| Eager(ExecutionEvent(row)))
                .map_err(Into::into)
        }))
    }

    /// Status changes of your runs (queued, started, finished), as they happen.
    async fn execution_updates(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<Eager<Execution>>> + use<>>
    {
        let viewer = request_context(ctx)?.viewer()?;
        Ok(live::updates(state(ctx)?, viewer).map(|row| {
            row.map(|row| Eager(Execution::own(row)))
                .map_err(Into::into)
        }))
    }
}
