//! The executable schema: every domain's query, mutation and subscription roots merged into one
//! schema, with the limits that apply to every operation. The transport (`http`) serves it; the
//! domains do not know it exists.

use std::sync::Arc;

use async_graphql::{
    Data, Executor, MergedObject, MergedSubscription, Request, Response, Schema, SchemaBuilder,
};
use futures_util::{StreamExt, stream::BoxStream};

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

/// The executable schema, with the checks async-graphql lacks applied around execution (see
/// [`limits`]). It is what both transports run: HTTP through [`Executor::execute_batch`], the
/// WebSocket protocols through [`Executor::execute_stream`].
#[derive(Clone)]
pub struct AppSchema {
    schema: Schema<Query, Mutation, Subscription>,
    max_aliases: usize,
}

impl Executor for AppSchema {
    async fn execute(&self, mut request: Request) -> Response {
        if let Err(error) = limits::check(&mut request, self.max_aliases) {
            return Response::from_errors(vec![error]);
        }
        let mut response = self.schema.execute(request).await;
        limits::code_request_errors(&mut response);
        response
    }

    fn execute_stream(
        &self,
        mut request: Request,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, Response> {
        if let Err(error) = limits::check(&mut request, self.max_aliases) {
            return futures_util::stream::once(async move { Response::from_errors(vec![error]) })
                .boxed();
        }
        self.schema
            .execute_stream_with_session_data(request, session_data.unwrap_or_default())
            .map(|mut response| {
                limits::code_request_errors(&mut response);
                response
            })
            .boxed()
    }
}

/// The schema's shape with its limits, without server state (enough to export the SDL).
pub fn schema_builder(config: &Config) -> SchemaBuilder<Query, Mutation, Subscription> {
    let mut builder = Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    .limit_depth(config.max_query_depth)
    .limit_complexity(config.max_query_complexity)
    .limit_directives(config.max_directives);
    if !config.introspection_enabled() {
        builder = builder.disable_introspection().disable_suggestions();
    }
    builder
}

/// The schema a server executes, holding the shared state.
pub fn build_schema(state: &AppState) -> AppSchema {
    AppSchema {
        schema: schema_builder(&state.config).data(state.clone()).finish(),
        max_aliases: state.config.max_aliases,
    }
}

/// The SDL of the schema, as committed in `schema.graphql`.
pub fn export_sdl(config: &Config) -> String {
    schema_builder(config).finish().sdl()
}
