//! The executable schema: every domain's query, mutation and subscription roots merged into one
//! schema, with the limits that apply to every operation. The transport (`http`) serves it; the
//! domains do not know it exists.

use std::{
    num::NonZeroUsize,
    sync::{Arc, Mutex},
};

use async_graphql::{
    Data, Executor, MergedObject, MergedSubscription, Request, Response, Schema, SchemaBuilder,
    parser::types::ExecutableDocument,
};
use futures_util::{StreamExt, stream::BoxStream};

use crate::{
    agents::graphql::{AgentsMutation, AgentsQuery},
    api_keys::graphql::{ApiKeysMutation, ApiKeysQuery},
    budgets::graphql::{BudgetsMutation, BudgetsQuery},
    config::Config,
    crews::graphql::{CrewsMutation, CrewsQuery, CrewsSubscription},
    executions::graphql::{ExecutionsMutation, ExecutionsQuery, ExecutionsSubscription},
    files::graphql::{FilesMutation, FilesQuery},
    graphql::limits,
    oauth::graphql::{OAuthMutation, OAuthQuery},
    state::AppState,
    threads::graphql::{ThreadsMutation, ThreadsQuery},
    tools::graphql::ToolsQuery,
    users::graphql::{UsersMutation, UsersQuery},
    webhooks::graphql::{WebhooksMutation, WebhooksQuery},
};

/// Every query field, one object per domain.
#[derive(MergedObject, Default)]
pub struct Query(
    UsersQuery,
    OAuthQuery,
    ApiKeysQuery,
    AgentsQuery,
    ExecutionsQuery,
    ToolsQuery,
    FilesQuery,
    ThreadsQuery,
    CrewsQuery,
    BudgetsQuery,
    WebhooksQuery,
);

/// Every mutation field, one object per domain.
#[derive(MergedObject, Default)]
pub struct Mutation(
    UsersMutation,
    OAuthMutation,
    ApiKeysMutation,
    AgentsMutation,
    ExecutionsMutation,
    FilesMutation,
    ThreadsMutation,
    CrewsMutation,
    BudgetsMutation,
    WebhooksMutation,
);

/// Every subscription field, one object per domain.
#[derive(MergedSubscription, Default)]
pub struct Subscription(ExecutionsSubscription, CrewsSubscription);

/// The executable schema, with the checks async-graphql lacks applied around execution (see
/// [`limits`]). It is what both transports run: HTTP through [`Executor::execute_batch`], the
/// WebSocket protocols through [`Executor::execute_stream`].
#[derive(Clone)]
pub struct AppSchema {
    schema: Schema<Query, Mutation, Subscription>,
    /// The same schema with the depth limit of introspection-only operations
    /// ([`INTROSPECTION_MAX_DEPTH`]): the standard introspection query of graphql-js (what
    /// codegen tools, Rover, Postman and Insomnia send) nests type references deeper than data
    /// queries may go. Every other limit is the same, and an operation that selects anything
    /// besides `__schema`, `__type` and `__typename` runs on the main schema.
    introspection: Schema<Query, Mutation, Subscription>,
    max_aliases: usize,
    parsed: ParsedDocuments,
}

/// The depth limit of operations that select only introspection (`__schema`, `__type`,
/// `__typename`). graphql-js's `getIntrospectionQuery` reaches 13 (its `TypeRef` fragment nests
/// `ofType` nine levels under `__schema { types { fields { type } } }`); introspection reads
/// only the schema, so a deeper limit costs nothing but the response's size, which the query's
/// own size bounds.
pub const INTROSPECTION_MAX_DEPTH: usize = 20;

/// How many distinct query texts keep their parsed document (least recently used dropped).
const PARSED_CAPACITY: usize = 256;
/// Longer query texts are parsed every time: with the capacity this bounds the cache at a few
/// MiB however many distinct queries clients send.
const PARSED_MAX_QUERY_BYTES: usize = 4 * 1024;

/// Parsed documents by query text. Parsing is pure (the same text always gives the same
/// document), and the profile of small queries showed the parser at 5–8% of the CPU, so the
/// documents of the texts clients repeat are kept. Everything after parsing — the alias limit,
/// validation with the depth, complexity and directive limits, execution — still runs on
/// every request.
#[derive(Clone)]
struct ParsedDocuments(Arc<Mutex<lru::LruCache<String, ExecutableDocument>>>);

impl ParsedDocuments {
    fn new() -> Self {
        let capacity = NonZeroUsize::new(PARSED_CAPACITY).unwrap_or(NonZeroUsize::MIN);
        Self(Arc::new(Mutex::new(lru::LruCache::new(capacity))))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, lru::LruCache<String, ExecutableDocument>> {
        // A cache: a panic elsewhere cannot leave it wrong, only less full.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Gives `request` the document of its text when it was parsed before; false when it
    /// was not and should be kept once parsed (a text too long to keep counts as reused).
    fn reuse(&self, request: &mut Request) -> bool {
        if request.query.len() > PARSED_MAX_QUERY_BYTES {
            return true;
        }
        let document = self.cache().get(&request.query).cloned();
        match document {
            Some(document) => {
                request.set_parsed_query(document);
                true
            }
            None => false,
        }
    }

    /// Keeps the document of a request that parsed (call after [`limits::check`] succeeded).
    fn keep(&self, request: &mut Request) {
        if let Ok(document) = request.parsed_query() {
            let document = document.clone();
            self.cache().put(request.query.clone(), document);
        }
    }

    /// Parses (or reuses the parse of) `request` and applies the limits checked before
    /// execution.
    fn check(
        &self,
        request: &mut Request,
        max_aliases: usize,
    ) -> Result<(), async_graphql::ServerError> {
        let reused = self.reuse(request);
        limits::check(request, max_aliases)?;
        if !reused {
            self.keep(request);
        }
        Ok(())
    }
}

/// Whether the operation `request` will run selects only introspection at its root (through
/// fragments too). Such an operation reads nothing but the schema.
fn introspection_only(request: &mut Request) -> bool {
    use async_graphql::parser::types::{DocumentOperations, Selection, SelectionSet};
    let operation_name = request.operation_name.clone();
    let Ok(document) = request.parsed_query() else {
        return false;
    };
    let document: &ExecutableDocument = document;
    let operation = match (&document.operations, operation_name.as_deref()) {
        (DocumentOperations::Single(op), _) => op,
        (DocumentOperations::Multiple(ops), Some(name)) => match ops.get(name) {
            Some(op) => op,
            None => return false,
        },
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => match ops.values().next() {
            Some(op) => op,
            None => return false,
        },
        _ => return false,
    };
    fn only_meta(
        set: &SelectionSet,
        document: &ExecutableDocument,
        fragments_left: &mut usize,
    ) -> bool {
        set.items.iter().all(|selection| match &selection.node {
            Selection::Field(field) => {
                matches!(
                    field.node.name.node.as_str(),
                    "__schema" | "__type" | "__typename"
                )
            }
            Selection::InlineFragment(inline) => {
                only_meta(&inline.node.selection_set.node, document, fragments_left)
            }
            Selection::FragmentSpread(spread) => {
                // Bounded: fragment cycles are refused by validation, but this runs before it.
                if *fragments_left == 0 {
                    return false;
                }
                *fragments_left -= 1;
                document
                    .fragments
                    .get(&spread.node.fragment_name.node)
                    .is_some_and(|f| {
                        only_meta(&f.node.selection_set.node, document, fragments_left)
                    })
            }
        })
    }
    operation.node.ty == async_graphql::parser::types::OperationType::Query
        && only_meta(&operation.node.selection_set.node, document, &mut 64)
}

impl Executor for AppSchema {
    async fn execute(&self, mut request: Request) -> Response {
        if let Err(error) = self.parsed.check(&mut request, self.max_aliases) {
            return Response::from_errors(vec![error]);
        }
        let schema = if introspection_only(&mut request) {
            &self.introspection
        } else {
            &self.schema
        };
        let mut response = schema.execute(request).await;
        limits::code_request_errors(&mut response);
        response
    }

    fn execute_stream(
        &self,
        mut request: Request,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, Response> {
        if let Err(error) = self.parsed.check(&mut request, self.max_aliases) {
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
    // No `.extension(…)`: `graphql::eager` resolves fields without async-graphql's per-field
    // extension hooks, which is only the same as async-graphql's resolution while there are
    // none. Tracing and metrics wrap the whole operation instead (`http::observe`).
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
    let config = &state.config;
    AppSchema {
        schema: schema_builder(config).data(state.clone()).finish(),
        introspection: schema_builder(config)
            .limit_depth(config.max_query_depth.max(INTROSPECTION_MAX_DEPTH))
            .data(state.clone())
            .finish(),
        max_aliases: state.config.max_aliases,
        parsed: ParsedDocuments::new(),
    }
}

/// The SDL of the schema, as committed in `schema.graphql`.
pub fn export_sdl(config: &Config) -> String {
    schema_builder(config).finish().sdl()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parsed_query_is_reused_and_limits_still_apply_to_the_reused_document() {
        let parsed = ParsedDocuments::new();
        let text = "{ a: __typename b: __typename c: __typename }";

        let mut first = Request::new(text);
        assert!(!parsed.reuse(&mut first), "nothing is cached yet");
        assert!(parsed.check(&mut first, 10).is_ok());
        assert!(parsed.cache().contains(text), "a query that parsed is kept");

        let mut again = Request::new(text);
        assert!(
            parsed.reuse(&mut again),
            "the same text reuses the document"
        );
        assert_eq!(
            again.parsed_query().map(|d| format!("{d:?}")).ok(),
            first.parsed_query().map(|d| format!("{d:?}")).ok()
        );

        // The alias limit is checked on the reused document too.
        let error = parsed
            .check(&mut Request::new(text), 2)
            .expect_err("three aliases break a limit of two");
        assert!(
            error.message.contains("too many aliases"),
            "{}",
            error.message
        );
    }

    #[test]
    fn queries_that_do_not_parse_or_are_too_long_are_not_kept() {
        let parsed = ParsedDocuments::new();
        let broken = "{ __typename";
        assert!(parsed.check(&mut Request::new(broken), 10).is_err());
        assert!(!parsed.cache().contains(broken));

        let long = format!(
            "{{ __typename {} }}",
            "__typename ".repeat(PARSED_MAX_QUERY_BYTES / 10)
        );
        assert!(long.len() > PARSED_MAX_QUERY_BYTES);
        assert!(parsed.check(&mut Request::new(long.clone()), 10).is_ok());
        assert!(!parsed.cache().contains(&long));
        assert_eq!(parsed.cache().len(), 0);
    }

    #[test]
    fn the_cache_is_bounded() {
        let parsed = ParsedDocuments::new();
        for i in 0..PARSED_CAPACITY + 10 {
            assert!(
                parsed
                    .check(&mut Request::new(format!("{{ a{i}: __typename }}")), 10)
                    .is_ok()
            );
        }
        assert_eq!(parsed.cache().len(), PARSED_CAPACITY);
    }
}
