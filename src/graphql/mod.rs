//! The GraphQL schema: merged roots from every domain, limits, guards, pagination, and the
//! HTTP and WebSocket transports.

pub mod guards;
pub mod http;
pub mod limits;
pub mod loaders;
pub mod observe;
pub mod pagination;
pub mod persisted;
pub mod ws;

use async_graphql::{Context, MergedObject, MergedSubscription, Schema, SchemaBuilder};
use uuid::Uuid;

use crate::{
    agents::graphql::{AgentsMutation, AgentsQuery},
    api_keys::graphql::{ApiKeysMutation, ApiKeysQuery},
    config::Config,
    error::{AppError, AppResult},
    executions::graphql::{ExecutionsMutation, ExecutionsQuery, ExecutionsSubscription},
    oauth::graphql::{OAuthMutation, OAuthQuery},
    request::RequestContext,
    state::AppState,
    users::graphql::{UsersMutation, UsersQuery},
};

/// Every query field, one object per domain.
#[derive(MergedObject, Default)]
pub struct Query(
    UsersQuery,
    OAuthQuery,
    ApiKeysQuery,
    AgentsQuery,
    ExecutionsQuery,
);

/// Every mutation field, one object per domain.
#[derive(MergedObject, Default)]
pub struct Mutation(
    UsersMutation,
    OAuthMutation,
    ApiKeysMutation,
    AgentsMutation,
    ExecutionsMutation,
);

/// Every subscription field, one object per domain.
#[derive(MergedSubscription, Default)]
pub struct Subscription(ExecutionsSubscription);

/// The executable schema.
pub type AppSchema = Schema<Query, Mutation, Subscription>;

/// The schema's shape with its limits, without server state (enough to export the SDL).
pub fn schema_builder(config: &Config) -> SchemaBuilder<Query, Mutation, Subscription> {
    let mut builder = Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    .limit_depth(config.max_query_depth)
    .limit_complexity(config.max_query_complexity)
    .limit_directives(config.max_directives)
    .extension(limits::Limits {
        max_aliases: config.max_aliases,
    });
    if !config.introspection_enabled() {
        builder = builder.disable_introspection().disable_suggestions();
    }
    builder
}

/// The schema a server executes, holding the shared state.
pub fn build_schema(state: &AppState) -> AppSchema {
    schema_builder(&state.config).data(state.clone()).finish()
}

/// The SDL of the schema, as committed in `schema.graphql`.
pub fn export_sdl(config: &Config) -> String {
    schema_builder(config).finish().sdl()
}

/// The shared state from a resolver's context.
pub fn state<'a>(ctx: &Context<'a>) -> AppResult<&'a AppState> {
    ctx.data::<AppState>()
        .map_err(|_| AppError::Internal(anyhow::anyhow!("AppState missing from schema data")))
}

/// The current request's context (identity, request id, client address).
pub fn request_context<'a>(ctx: &Context<'a>) -> AppResult<&'a RequestContext> {
    ctx.data::<RequestContext>().map_err(|_| {
        AppError::Internal(anyhow::anyhow!("RequestContext missing from request data"))
    })
}

/// Parses an `ID` argument as a UUID, naming the argument when it is not one.
pub fn parse_id(field: &str, id: &async_graphql::ID) -> AppResult<Uuid> {
    Uuid::parse_str(id.as_str()).map_err(|_| AppError::bad_input(field, "is not a valid id"))
}
