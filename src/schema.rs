//! The executable schema: every domain's query, mutation and subscription roots merged into one
//! schema, with the limits that apply to every operation. The transport (`http`) serves it; the
//! domains do not know it exists.

use async_graphql::{MergedObject, MergedSubscription, Schema, SchemaBuilder};

use crate::{
    agents::graphql::{AgentsMutation, AgentsQuery},
    api_keys::graphql::{ApiKeysMutation, ApiKeysQuery},
    config::Config,
    executions::graphql::{ExecutionsMutation, ExecutionsQuery, ExecutionsSubscription},
    graphql::limits,
    oauth::graphql::{OAuthMutation, OAuthQuery},
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
