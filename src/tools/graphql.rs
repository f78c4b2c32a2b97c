//! GraphQL for tools: which tools this server can run, and why one cannot.

use async_graphql::{Context, Object, SimpleObject};

use crate::{
    graphql::{guards::RoleGuard, request_context, state},
    tools::AgentTool,
};

/// A tool an agent can be given, as this server offers it.
#[derive(SimpleObject)]
pub struct ToolInfo {
    /// The tool (what `Agent.tools` lists).
    pub tool: AgentTool,
    /// Whether runs on this server can call it; agents may list an unavailable tool, whose
    /// functions are then not offered to the model.
    pub available: bool,
    /// Why it is unavailable, when it is.
    pub reason: Option<String>,
    /// The functions it offers the model (`calculator`, `wikipedia_search` …).
    pub functions: Vec<String>,
}

/// Tool queries.
#[derive(Default)]
pub struct ToolsQuery;

#[Object]
impl ToolsQuery {
    /// The tools this server can run for your agents, and why any of them is unavailable.
    #[graphql(guard = "RoleGuard::USER")]
    async fn tools(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ToolInfo>> {
        let viewer = request_context(ctx)?.viewer()?;
        let state = state(ctx)?;
        let has_search_key = crate::api_keys::service::has_search_key(state, viewer.id()).await?;
        let config = &state.config;
        Ok(AgentTool::ALL
            .into_iter()
            .map(|tool| {
                let reason = tool.unavailable(config, has_search_key);
                ToolInfo {
                    tool,
                    available: reason.is_none(),
                    reason: reason.map(str::to_owned),
                    functions: tool.specs().iter().map(|s| s.name.to_owned()).collect(),
                }
            })
            .collect())
    }
}
