//! GraphQL types and resolvers for agents. Thin: parse, authorize, call the service; relations
//! come from the page's shared batches for the agents of a page, and from the request's
//! DataLoaders otherwise.

use std::sync::Arc;

use async_graphql::{Context, ID, InputObject, Json, MaybeUndefined, Object};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    agents::{
        model::AgentRow,
        service::{self, AgentChanges, AgentInput},
    },
    api_keys::{
        graphql::{ApiKey, LlmProvider},
        model::ApiKeyRow,
        service as api_keys,
    },
    db::shared::{SharedRow, SharedRows},
    error::AppError,
    executions::{
        graphql::{Execution, executions_page, run_columns, runs_connection},
        model::{ExecutionRow, ExecutionStatus, RecentOf, RunColumns, RunFilter},
        service::{self as executions, RecentKey},
    },
    graphql::{
        eager::Eager,
        guards::RoleGuard,
        loaders::Loaders,
        pagination::{Page, PageOf},
        parse_id, request_context, selection,
        siblings::{Batch, Batches},
        state,
    },
    llm::ProviderKind,
    tools::AgentTool,
};

/// An agent: who it is (role, goal, backstory), which model and key it runs on, and its runs.
/// Agents listed in one page share that page's batches ([`PageBatches`]); others (`None`) load
/// their relations through the request's DataLoaders.
pub struct Agent(pub AgentRow, Option<Arc<PageBatches>>);

impl Agent {
    /// An agent on its own (not one of a page).
    pub fn single(row: AgentRow) -> Self {
        Self(row, None)
    }

    /// The agent `id` through the request's DataLoader (cached per request; a page of agents
    /// feeds it), for the fields of other types that point at an agent. The caller has read
    /// `id` from a row the viewer may see. Awaited from the heap, as the loads below.
    pub async fn by_id(ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Option<Self>> {
        let loaded = Box::pin(ctx.data::<Loaders>()?.agents.load_one(id)).await?;
        Ok(loaded.map(Self::single))
    }

    /// The agent's key, from its page's batch or the request's DataLoader. (The loads are
    /// awaited from the heap, here and below: see [`crate::graphql::eager`] on field futures.)
    async fn key(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<SharedRow<ApiKeyRow>>> {
        let id = self.0.api_key_id;
        match &self.1 {
            Some(page) => {
                let key = Box::pin(page.keys.get(&id, || async {
                    let rows = api_keys::by_ids(&state(ctx)?.pool, &page.key_ids).await?;
                    let split = SharedRows::split(rows, &page.key_ids, |row| Some(row.id));
                    Ok::<_, AppError>(split.into_iter().collect())
                }))
                .await?;
                Ok(key.and_then(|rows| rows.iter().next()))
            }
            None => {
                let row = Box::pin(ctx.data::<Loaders>()?.api_keys.load_one(id)).await?;
                Ok(row.map(Into::into))
            }
        }
    }

    /// The agent's newest `limit` runs, from its page's batch or the request's DataLoader.
    async fn recent_runs(
        &self,
        ctx: &Context<'_>,
        limit: i64,
        columns: RunColumns,
    ) -> async_graphql::Result<SharedRows<ExecutionRow>> {
        let key = (self.0.id, limit, columns);
        let rows = match &self.1 {
            Some(page) => {
                let batch = page.runs.shape((limit, columns));
                Box::pin(batch.get(&key, || async {
                    let keys: Vec<RecentKey> = page
                        .agent_ids
                        .iter()
                        .map(|id| (*id, limit, columns))
                        .collect();
                    executions::recent_runs(&state(ctx)?.pool, RecentOf::Agent, &keys).await
                }))
                .await?
            }
            None => Box::pin(ctx.data::<Loaders>()?.recent_executions.load_one(key)).await?,
        };
        Ok(rows.unwrap_or_default())
    }
}

/// What the agents of one page share: their ids and their keys' ids, so that the first agent
/// asked for its key (or its newest runs) loads them for the whole page in one statement,
/// without a DataLoader's per-call bookkeeping (see [`crate::graphql::siblings`]). Like the
/// DataLoaders these batches filter by no owner: the ids come from rows the viewer may read.
pub struct PageBatches {
    agent_ids: Vec<Uuid>,
    key_ids: Vec<Uuid>,
    keys: Batch<Uuid, SharedRows<ApiKeyRow>>,
    runs: Batches<(i64, RunColumns), RecentKey, SharedRows<ExecutionRow>>,
}

impl PageBatches {
    fn new(rows: &[AgentRow]) -> Arc<Self> {
        let mut key_ids: Vec<Uuid> = rows.iter().map(|a| a.api_key_id).collect();
        key_ids.sort_unstable();
        key_ids.dedup();
        Arc::new(Self {
            agent_ids: rows.iter().map(|a| a.id).collect(),
            key_ids,
            keys: Batch::default(),
            runs: Batches::default(),
        })
    }
}

#[Object]
impl Agent {
    /// Stable id.
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// Name, unique per user.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Free description.
    async fn description(&self) -> &str {
        &self.0.description
    }
    /// Who the agent is.
    async fn role(&self) -> &str {
        &self.0.role
    }
    /// What it tries to achieve.
    async fn goal(&self) -> &str {
        &self.0.goal
    }
    /// Its background.
    async fn backstory(&self) -> &str {
        &self.0.backstory
    }
    /// The provider of its key.
    async fn provider(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<LlmProvider>> {
        Ok(self
            .key(ctx)
            .await?
            .and_then(|k| ProviderKind::from_stored(&k.provider))
            .map(Into::into))
    }
    /// Model name at the provider, e.g. `gpt-4o-mini`.
    async fn model(&self) -> &str {
        &self.0.model
    }
    /// Sampling temperature (0–2); null means the provider's default.
    async fn temperature(&self) -> Option<f64> {
        self.0.temperature
    }
    /// Output token cap; null means the provider's default.
    async fn max_output_tokens(&self) -> Option<i32> {
        self.0.max_output_tokens
    }
    /// Tools the agent may use.
    async fn tools(&self) -> Vec<AgentTool> {
        self.0
            .tools
            .iter()
            .flatten()
            .filter_map(|t| AgentTool::from_name(t))
            .collect()
    }
    /// Free JSON configuration.
    async fn config(&self) -> Json<&serde_json::Value> {
        Json(&self.0.config)
    }
    /// Inactive agents cannot run.
    async fn is_active(&self) -> bool {
        self.0.is_active
    }
    /// The API key runs use (masked).
    async fn api_key(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Eager<ApiKey>>> {
        Ok(self.key(ctx).await?.map(|row| Eager(ApiKey(row))))
    }
    /// This agent's runs, newest first.
    #[graphql(complexity = "first.unwrap_or(20).max(0) as usize * child_complexity")]
    async fn executions(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        status: Option<ExecutionStatus>,
    ) -> async_graphql::Result<PageOf<Eager<Execution>>> {
        let page = Page::of(ctx, first, after)?;
        if page.after.is_none() && status.is_none() {
            // The common shape (`executions(first: 5)` under a list of agents) is batched.
            let rows = self
                .recent_runs(ctx, page.fetch_limit(), run_columns(ctx, true))
                .await?;
            return Ok(runs_connection(&page, rows));
        }
        let viewer = request_context(ctx)?.viewer()?;
        let of = RunFilter {
            agent_id: Some(self.0.id),
            status,
            ..RunFilter::default()
        };
        Box::pin(executions_page(state(ctx)?, viewer, of, page)).await
    }
    /// Creation time.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// Last change.
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
}

/// Input of `createAgent`.
#[derive(InputObject)]
pub struct CreateAgentInput {
    /// Name (1–100 characters, unique among your agents).
    pub name: String,
    /// Free description (up to 2000 characters).
    pub description: Option<String>,
    /// Who the agent is, e.g. "a senior travel planner" (1–2000 characters).
    pub role: String,
    /// What it tries to achieve (1–4000 characters).
    pub goal: String,
    /// Its background (up to 8000 characters).
    pub backstory: Option<String>,
    /// One of your active API keys.
    pub api_key_id: ID,
    /// Model name at the provider, e.g. `gpt-4o-mini` or `claude-sonnet-4-20250514`.
    pub model: String,
    /// Sampling temperature, 0–2.
    pub temperature: Option<f64>,
    /// Output token cap, 1–200000.
    pub max_output_tokens: Option<i32>,
    /// Tools (each at most once).
    #[graphql(default)]
    pub tools: Vec<AgentTool>,
    /// Free JSON object, up to 16 KiB.
    pub config: Option<Json<serde_json::Value>>,
}

/// Input of `updateAgent`: omitted fields stay as they are; `temperature` and
/// `maxOutputTokens` may be set to null to use the provider's default.
#[derive(InputObject)]
pub struct UpdateAgentInput {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New role.
    pub role: Option<String>,
    /// New goal.
    pub goal: Option<String>,
    /// New backstory.
    pub backstory: Option<String>,
    /// Another of your active keys.
    pub api_key_id: Option<ID>,
    /// New model.
    pub model: Option<String>,
    /// New temperature, or null for the provider default.
    pub temperature: MaybeUndefined<f64>,
    /// New output cap, or null for the provider default.
    pub max_output_tokens: MaybeUndefined<i32>,
    /// New tool list.
    pub tools: Option<Vec<AgentTool>>,
    /// New configuration.
    pub config: Option<Json<serde_json::Value>>,
}

fn maybe<T>(value: MaybeUndefined<T>) -> Option<Option<T>> {
    match value {
        MaybeUndefined::Undefined => None,
        MaybeUndefined::Null => Some(None),
        MaybeUndefined::Value(v) => Some(Some(v)),
    }
}

/// A page of `user_id`'s agents, newest first (shared by `agents` and `User.agents`; the caller
/// has checked that the viewer may see them).
pub async fn agents_page(
    ctx: &Context<'_>,
    user_id: uuid::Uuid,
    first: Option<i32>,
    after: Option<String>,
    active: Option<bool>,
) -> async_graphql::Result<PageOf<Eager<Agent>>> {
    let page = Page::of(ctx, first, after)?;
    let rows = service::page(state(ctx)?, user_id, active, page.after, page.fetch_limit()).await?;
    // Only the agents on the page share its batches (not the extra row that tells whether
    // another page follows).
    let batches = PageBatches::new(&rows[..rows.len().min(page.first)]);
    // Runs listed below these agents resolve `agent` from this, without a query; only when
    // they show it (copying a page of agents into the cache was about 3% of a page's CPU).
    if runs_show_their_agent(ctx) {
        ctx.data::<Loaders>()?
            .agents
            .feed_many(rows.iter().map(|a| (a.id, a.clone())))
            .await;
    }
    Ok(page.connection(
        rows,
        |a| a.id,
        |row| Eager(Agent(row, Some(batches.clone()))),
    ))
}

/// Whether a page of agents (the connection field `ctx` resolves) selects its agents' runs'
/// `agent`, through `nodes` or `edges { node }` at either level. Fragments and aliases count.
fn runs_show_their_agent(ctx: &Context<'_>) -> bool {
    [
        &["nodes", "executions", "nodes"][..],
        &["nodes", "executions", "edges", "node"],
        &["edges", "node", "executions", "nodes"],
        &["edges", "node", "executions", "edges", "node"],
    ]
    .iter()
    .any(|runs| selection::shows(ctx, runs, &["agent"]))
}

/// Agent queries.
#[derive(Default)]
pub struct AgentsQuery;

#[Object]
impl AgentsQuery {
    /// Your agents, newest first; `active` filters by state.
    #[graphql(
        guard = "RoleGuard::USER",
        complexity = "first.unwrap_or(20).max(0) as usize * child_complexity"
    )]
    async fn agents(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        active: Option<bool>,
    ) -> async_graphql::Result<PageOf<Eager<Agent>>> {
        let viewer = request_context(ctx)?.viewer()?;
        agents_page(ctx, viewer.id(), first, after, active).await
    }

    /// One of your agents; null if it does not exist or is not yours.
    #[graphql(guard = "RoleGuard::USER")]
    async fn agent(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Agent>> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        match service::get(state(ctx)?, viewer, id).await {
            Ok(row) => Ok(Some(Agent::single(row))),
            Err(AppError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Agent mutations.
#[derive(Default)]
pub struct AgentsMutation;

#[Object]
impl AgentsMutation {
    /// Creates an agent on one of your active keys.
    #[graphql(guard = "RoleGuard::USER")]
    async fn create_agent(
        &self,
        ctx: &Context<'_>,
        input: CreateAgentInput,
    ) -> async_graphql::Result<Agent> {
        let viewer = request_context(ctx)?.viewer()?;
        let input = AgentInput {
            name: input.name,
            description: input.description,
            role: input.role,
            goal: input.goal,
            backstory: input.backstory,
            api_key_id: input.api_key_id.to_string(),
            model: input.model,
            temperature: input.temperature,
            max_output_tokens: input.max_output_tokens,
            tools: input.tools.iter().map(|t| t.as_str().to_owned()).collect(),
            config: input.config.map(|c| c.0),
        };
        Ok(Agent::single(
            service::create(state(ctx)?, viewer, input).await?,
        ))
    }

    /// Changes an agent; omitted fields stay as they are.
    #[graphql(guard = "RoleGuard::USER")]
    async fn update_agent(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateAgentInput,
    ) -> async_graphql::Result<Agent> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        let changes = AgentChanges {
            name: input.name,
            description: input.description,
            role: input.role,
            goal: input.goal,
            backstory: input.backstory,
            api_key_id: input.api_key_id.map(|id| id.to_string()),
            model: input.model,
            temperature: maybe(input.temperature),
            max_output_tokens: maybe(input.max_output_tokens),
            tools: input
                .tools
                .map(|tools| tools.iter().map(|t| t.as_str().to_owned()).collect()),
            config: input.config.map(|c| c.0),
        };
        Ok(Agent::single(
            service::update(state(ctx)?, viewer, id, changes).await?,
        ))
    }

    /// Turns an agent on or off; inactive agents cannot run.
    #[graphql(guard = "RoleGuard::USER")]
    async fn set_agent_active(
        &self,
        ctx: &Context<'_>,
        id: ID,
        active: bool,
    ) -> async_graphql::Result<Agent> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        Ok(Agent::single(
            service::set_active(state(ctx)?, viewer, id, active).await?,
        ))
    }

    /// Deletes an agent with its runs (refused while one is in progress).
    #[graphql(guard = "RoleGuard::USER")]
    async fn delete_agent(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        Ok(service::delete(state(ctx)?, viewer, id).await?)
    }
}
