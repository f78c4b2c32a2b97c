//! The executable schema: every domain's query, mutation and subscription roots merged into one
//! schema, with the limits that apply to every operation. The transport (`http`) serves it; the
//! domains do not know it exists.

use std::{
    num::NonZeroUsize,
    sync::{Arc, Mutex},
};

use async_graphql::{
    Data, Executor, MergedObject, MergedSubscription, Request, Response, Schema, SchemaBuilder,
    ValidationMode, parser::types::ExecutableDocument,
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
    /// The same schema with async-graphql's fast validation (the depth, complexity and
    /// directive limits and fragment cycles; not the rules that compare the document with the
    /// schema), for operations that passed the full validation before (see
    /// [`ParsedDocuments`]).
    validated: Schema<Query, Mutation, Subscription>,
    /// [`AppSchema::introspection`] with the fast validation, for introspection-only
    /// operations that passed the full validation before (`{ __typename }` among them).
    introspection_validated: Schema<Query, Mutation, Subscription>,
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

/// Parsed documents by query text, and which of their operations passed validation.
///
/// Parsing is pure (the same text always gives the same document), and the profile of small
/// queries showed the parser at 5–8% of the CPU, so the documents of the texts clients repeat
/// are kept. Validation is pure too given the document, the operation name and the variables
/// (the schema is fixed for the server's life, and no type or field depends on who asks), so an
/// operation sent **without variables** that passed async-graphql's full rule set once runs
/// later on [`AppSchema::validated`], which checks only what depends on nothing but the
/// document: the depth, complexity and directive limits and fragment cycles (all still applied
/// on every request, as is the alias limit here). Requests with variables are validated in full
/// every time: the rules check variable values against argument types.
#[derive(Clone)]
struct ParsedDocuments(Arc<Mutex<lru::LruCache<String, Parsed>>>);

/// A kept document and the operations (by name; `None` for the only one) that passed
/// validation without variables.
#[derive(Clone)]
struct Parsed {
    document: ExecutableDocument,
    validated: Vec<Option<String>>,
}

/// Most operation names of one document remembered as validated (a document names each
/// operation once; past this the others are simply validated every time).
const VALIDATED_PER_DOCUMENT: usize = 8;

impl ParsedDocuments {
    fn new() -> Self {
        let capacity = NonZeroUsize::new(PARSED_CAPACITY).unwrap_or(NonZeroUsize::MIN);
        Self(Arc::new(Mutex::new(lru::LruCache::new(capacity))))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, lru::LruCache<String, Parsed>> {
        // A cache: a panic elsewhere cannot leave it wrong, only less full.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Gives `request` the document of its text when it was parsed before, with whether its
    /// operation passed validation as it is sent now (no variables); `None` when it was not
    /// parsed before and should be kept once parsed (a text too long to keep counts as
    /// reused, never validated).
    fn reuse(&self, request: &mut Request) -> Option<bool> {
        if request.query.len() > PARSED_MAX_QUERY_BYTES {
            return Some(false);
        }
        let found = self.cache().get(&request.query).map(|parsed| {
            let validated = request.variables.is_empty()
                && parsed
                    .validated
                    .iter()
                    .any(|name| name.as_deref() == request.operation_name.as_deref());
            (parsed.document.clone(), validated)
        });
        let (document, validated) = found?;
        request.set_parsed_query(document);
        Some(validated)
    }

    /// Keeps the document of a request that parsed (call after [`limits::check`] succeeded).
    fn keep(&self, request: &mut Request) {
        if let Ok(document) = request.parsed_query() {
            let parsed = Parsed {
                document: document.clone(),
                validated: Vec::new(),
            };
            self.cache().put(request.query.clone(), parsed);
        }
    }

    /// Notes that the operation `operation_name` of `query`, sent without variables, passed
    /// validation (if the document is still kept).
    fn validated(&self, query: &str, operation_name: Option<&str>) {
        let mut cache = self.cache();
        if let Some(parsed) = cache.get_mut(query)
            && parsed.validated.len() < VALIDATED_PER_DOCUMENT
            && !parsed
                .validated
                .iter()
                .any(|name| name.as_deref() == operation_name)
        {
            parsed.validated.push(operation_name.map(str::to_owned));
        }
    }

    /// Parses (or reuses the parse of) `request` and applies the limits checked before
    /// execution; true when the operation, as sent, passed validation before.
    fn check(
        &self,
        request: &mut Request,
        max_aliases: usize,
    ) -> Result<bool, async_graphql::ServerError> {
        let reused = self.reuse(request);
        limits::check(request, max_aliases)?;
        if reused.is_none() {
            self.keep(request);
        }
        Ok(reused.unwrap_or(false))
    }
}

/// Whether async-graphql's validation passed for a response: it refuses an invalid operation
/// with errors that have no path (and no data); resolver errors have one. A limit broken
/// (depth, complexity) also has no path. Anything unclear counts as not passed.
fn passed_validation(response: &Response) -> bool {
    response.errors.iter().all(|error| !error.path.is_empty())
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
        let validated = match self.parsed.check(&mut request, self.max_aliases) {
            Ok(validated) => validated,
            Err(error) => return Response::from_errors(vec![error]),
        };
        // Whether an operation is introspection-only depends on the document and the operation
        // name alone, so an operation remembered as validated always comes back to the same
        // pair of schemas.
        let (full, fast) = if introspection_only(&mut request) {
            (&self.introspection, &self.introspection_validated)
        } else {
            (&self.schema, &self.validated)
        };
        if validated {
            let mut response = fast.execute(request).await;
            limits::code_request_errors(&mut response);
            return response;
        }
        // Worth remembering only for a request without variables whose text is kept.
        let remember = (request.variables.is_empty()
            && request.query.len() <= PARSED_MAX_QUERY_BYTES)
            .then(|| (request.query.clone(), request.operation_name.clone()));
        let mut response = full.execute(request).await;
        if let Some((query, operation_name)) = remember
            && passed_validation(&response)
        {
            self.parsed.validated(&query, operation_name.as_deref());
        }
        limits::code_request_errors(&mut response);
        response
    }

    fn execute_stream(
        &self,
        mut request: Request,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, Response> {
        // Operations on a socket are validated in full (subscriptions are long-lived: the
        // validation is a small share of their cost).
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
        validated: schema_builder(config)
            .validation_mode(ValidationMode::Fast)
            .data(state.clone())
            .finish(),
        introspection_validated: schema_builder(config)
            .limit_depth(config.max_query_depth.max(INTROSPECTION_MAX_DEPTH))
            .validation_mode(ValidationMode::Fast)
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
        assert!(parsed.reuse(&mut first).is_none(), "nothing is cached yet");
        assert!(parsed.check(&mut first, 10).is_ok());
        assert!(parsed.cache().contains(text), "a query that parsed is kept");

        let mut again = Request::new(text);
        assert_eq!(
            parsed.reuse(&mut again),
            Some(false),
            "the same text reuses the document, not yet validated"
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
    fn only_the_validated_operation_sent_without_variables_skips_full_validation() {
        let parsed = ParsedDocuments::new();
        let text = "query A { __typename } query B($n: Int) { __typename }";
        let request = |name: &str| Request::new(text).operation_name(name);

        assert!(
            !parsed.check(&mut request("A"), 10).unwrap(),
            "never run yet"
        );
        assert!(
            !parsed.check(&mut request("A"), 10).unwrap(),
            "parsed, not yet validated"
        );
        parsed.validated(text, Some("A"));
        assert!(parsed.check(&mut request("A"), 10).unwrap());
        assert!(
            !parsed.check(&mut request("B"), 10).unwrap(),
            "another operation of the same document is validated on its own"
        );
        let with_variables = request("A").variables(async_graphql::Variables::from_json(
            serde_json::json!({"n": 1}),
        ));
        assert!(
            !parsed.check(&mut { with_variables }, 10).unwrap(),
            "variables are checked against argument types: always the full validation"
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
