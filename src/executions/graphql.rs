//! GraphQL types, queries, mutations and subscriptions for runs. Thin: parse, authorize, call
//! the service or the hub.

use std::time::Duration;

use async_graphql::{Context, Enum, ID, Json, Object, Subscription, connection::Connection};
use chrono::{DateTime, Utc};
use futures_util::Stream;

use crate::{
    agents::graphql::Agent,
    error::AppError,
    executions::{
        hub::RunWatch,
        model::{self, EventRow, ExecutionRow, kind, status},
        service,
    },
    graphql::{
        guards::RoleGuard, loaders::Loaders, pagination::Page, parse_id, request_context, state,
    },
    request::Viewer,
    state::AppState,
};

/// Where a run is.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum ExecutionStatus {
    /// Accepted, not started yet.
    Queued,
    /// Streaming from the provider.
    Running,
    /// Finished normally.
    Succeeded,
    /// Ended by an error (see `error`).
    Failed,
    /// Ended by `cancelExecution`.
    Cancelled,
    /// Ended by the per-run time limit.
    TimedOut,
}

impl ExecutionStatus {
    fn as_stored(self) -> &'static str {
        match self {
            Self::Queued => status::QUEUED,
            Self::Running => status::RUNNING,
            Self::Succeeded => status::SUCCEEDED,
            Self::Failed => status::FAILED,
            Self::Cancelled => status::CANCELLED,
            Self::TimedOut => status::TIMED_OUT,
        }
    }

    fn from_stored(name: &str) -> Self {
        [
            Self::Queued,
            Self::Running,
            Self::Succeeded,
            Self::Failed,
            Self::Cancelled,
            Self::TimedOut,
        ]
        .into_iter()
        .find(|s| s.as_stored() == name)
        .unwrap_or(Self::Failed)
    }
}

/// What an event says.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum ExecutionEventKind {
    /// The run started (`data`: model, provider).
    Started,
    /// Output text (`delta`).
    OutputDelta,
    /// A tool was called.
    ToolCall,
    /// A tool answered.
    ToolResult,
    /// Tokens and cost (`data`).
    Usage,
    /// Terminal: success.
    Completed,
    /// Terminal: failure (`data.error`).
    Failed,
    /// Terminal: cancelled.
    Cancelled,
    /// Terminal: timed out.
    TimedOut,
}

impl ExecutionEventKind {
    fn from_stored(name: &str) -> Self {
        match name {
            kind::STARTED => Self::Started,
            kind::OUTPUT_DELTA => Self::OutputDelta,
            "TOOL_CALL" => Self::ToolCall,
            "TOOL_RESULT" => Self::ToolResult,
            kind::USAGE => Self::Usage,
            kind::COMPLETED => Self::Completed,
            kind::CANCELLED => Self::Cancelled,
            kind::TIMED_OUT => Self::TimedOut,
            _ => Self::Failed,
        }
    }
}

/// One entry of a run's append-only event log.
pub struct ExecutionEvent(pub EventRow);

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
    async fn kind(&self) -> ExecutionEventKind {
        ExecutionEventKind::from_stored(&self.0.kind)
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

/// A run of an agent: its input, output, status, tokens and cost.
pub struct Execution(pub ExecutionRow);

#[Object]
impl Execution {
    /// Stable id.
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// The agent that ran.
    async fn agent(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Agent>> {
        Ok(ctx
            .data::<Loaders>()?
            .agents
            .load_one(self.0.agent_id)
            .await?
            .map(Agent))
    }
    /// Where the run is.
    async fn status(&self) -> ExecutionStatus {
        ExecutionStatus::from_stored(&self.0.status)
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
    ) -> async_graphql::Result<Vec<ExecutionEvent>> {
        let first = first.unwrap_or(100);
        if !(1..=1000).contains(&first) {
            return Err(AppError::bad_input("first", "must be between 1 and 1000").into());
        }
        let mut conn = state(ctx)?.pool.get().await.map_err(AppError::from)?;
        let rows = model::events_after(&mut conn, self.0.id, after.unwrap_or(0), i64::from(first))
            .await
            .map_err(AppError::from)?;
        Ok(rows.into_iter().map(ExecutionEvent).collect())
    }
}

/// A page of the viewer's runs as a connection (shared by `executions` and `Agent.executions`).
pub async fn executions_page(
    state: &AppState,
    viewer: &Viewer,
    agent_id: Option<uuid::Uuid>,
    status: Option<ExecutionStatus>,
    page: Page,
) -> async_graphql::Result<Connection<String, Execution>> {
    let rows = service::page(
        state,
        viewer,
        agent_id,
        status.map(ExecutionStatus::as_stored),
        page.after,
        page.fetch_limit(),
    )
    .await?;
    Ok(page.connection(rows, |e| e.id, Execution))
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
            Ok(row) => Ok(Some(Execution(row))),
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
    ) -> async_graphql::Result<Connection<String, Execution>> {
        let viewer = request_context(ctx)?.viewer()?;
        let page = Page::new(first, after)?;
        let agent_id = agent_id.map(|id| parse_id("agentId", &id)).transpose()?;
        executions_page(state(ctx)?, viewer, agent_id, status, page).await
    }
}

/// Run mutations.
#[derive(Default)]
pub struct ExecutionsMutation;

#[Object]
impl ExecutionsMutation {
    /// Runs an agent on `input` and returns the run at once (QUEUED); follow it with the
    /// `executionEvents` subscription. Sending the same `idempotencyKey` with the same request
    /// returns the same run instead of starting another.
    #[graphql(guard = "RoleGuard::USER")]
    async fn execute_agent(
        &self,
        ctx: &Context<'_>,
        agent_id: ID,
        input: String,
        idempotency_key: Option<String>,
    ) -> async_graphql::Result<Execution> {
        let viewer = request_context(ctx)?.viewer()?;
        let agent_id = parse_id("agentId", &agent_id)?;
        Ok(Execution(
            service::execute(state(ctx)?, viewer, agent_id, input, idempotency_key).await?,
        ))
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
        Ok(Execution(service::cancel(state(ctx)?, viewer, id).await?))
    }
}

/// Events read from the table per wake-up.
const EVENT_PAGE: i64 = 500;
/// A subscriber re-reads at least this often, even without a wake-up (belt and braces for a
/// lost NOTIFY).
const SAFETY_POLL: Duration = Duration::from_secs(5);

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
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<ExecutionEvent>> + use<>>
    {
        let viewer = request_context(ctx)?.viewer()?.clone();
        let state = state(ctx)?.clone();
        let id = parse_id("executionId", &execution_id)?;
        if after.is_some_and(|a| a < 0) {
            return Err(AppError::bad_input("after", "must be 0 or more").into());
        }
        service::get(&state, &viewer, id).await?;
        // Watch before the first read: an event committed in between still wakes us.
        let RunWatch {
            mut advanced,
            mut resync,
        } = state.hub.watch_run(id);
        let mut last = after.unwrap_or(0);
        Ok(async_stream::stream! {
            loop {
                let batch = async {
                    let mut conn = state.pool.get().await?;
                    Ok::<_, AppError>(model::events_after(&mut conn, id, last, EVENT_PAGE).await?)
                }
                .await;
                let batch = match batch {
                    Ok(batch) => batch,
                    Err(e) => {
                        yield Err(e.into());
                        break;
                    }
                };
                let full = batch.len() as i64 == EVENT_PAGE;
                for event in batch {
                    last = event.sequence;
                    let terminal = kind::is_terminal(&event.kind);
                    yield Ok(ExecutionEvent(event));
                    if terminal {
                        return;
                    }
                }
                if full {
                    continue;
                }
                tokio::select! {
                    changed = advanced.changed() => {
                        if changed.is_err() {
                            tokio::time::sleep(SAFETY_POLL).await;
                        }
                    }
                    _ = resync.changed() => {}
                    () = tokio::time::sleep(SAFETY_POLL) => {}
                }
            }
        })
    }

    /// Status changes of your runs (queued, started, finished), as they happen.
    async fn execution_updates(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<Execution>> + use<>> {
        let viewer = request_context(ctx)?.viewer()?.clone();
        let state = state(ctx)?.clone();
        let mut updates = state.hub.watch_user(viewer.id());
        Ok(async_stream::stream! {
            loop {
                match updates.recv().await {
                    Ok(id) => match service::get(&state, &viewer, id).await {
                        Ok(row) => yield Ok(Execution(row)),
                        Err(AppError::NotFound { .. }) => {}
                        Err(e) => yield Err(e.into()),
                    },
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        })
    }
}
