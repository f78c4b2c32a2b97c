//! Query limits async-graphql lacks (aliases), and the error codes of parse and validation
//! failures (`GRAPHQL_PARSE_FAILED`, `GRAPHQL_VALIDATION_FAILED`). They are applied around
//! execution by [`crate::schema::AppSchema`], not as an async-graphql extension: with any
//! extension installed, async-graphql sends every field of every response (every event of
//! every subscriber included) through the extension chain and a registry lookup.

use async_graphql::{
    Request, Response, ServerError, Value,
    parser::types::{ExecutableDocument, Selection, SelectionSet},
};

/// `extensions.code` of a document that does not parse.
pub const PARSE_FAILED: &str = crate::error::ErrorCode::GraphqlParseFailed.as_str();
/// `extensions.code` of a document that breaks a validation rule or a limit.
pub const VALIDATION_FAILED: &str = crate::error::ErrorCode::GraphqlValidationFailed.as_str();

/// Gives an error a code unless it already has one.
pub fn with_code(mut err: ServerError, code: &str) -> ServerError {
    let extensions = err.extensions.get_or_insert_with(Default::default);
    if extensions.get("code").is_none() {
        extensions.set("code", code);
    }
    err
}

/// Parses the request's document once (execution reuses it) and applies the alias limit.
/// A document that does not parse is `GRAPHQL_PARSE_FAILED`; one over a limit is
/// `GRAPHQL_VALIDATION_FAILED`.
pub fn check(request: &mut Request, max_aliases: usize) -> Result<(), ServerError> {
    let document = request.parsed_query().map_err(|e| {
        // The parser itself enforces a directive limit (CVE-2024-47614); that is a limit the
        // document broke, not a syntax error, so it is reported like the other limits.
        let code = if e.message.contains("number of directives") {
            VALIDATION_FAILED
        } else {
            PARSE_FAILED
        };
        with_code(e, code)
    })?;
    let aliases = count_aliases(document);
    if aliases > max_aliases {
        return Err(with_code(
            ServerError::new(
                format!("Query has too many aliases: {aliases}, the limit is {max_aliases}"),
                None,
            ),
            VALIDATION_FAILED,
        ));
    }
    Ok(())
}

/// Codes the errors of a request async-graphql refused before executing it (a validation rule,
/// the depth, complexity or directive limit): such a response has no data and its errors no
/// path. Resolver errors carry a path, and Agentry's own errors a code already.
pub fn code_request_errors(response: &mut Response) {
    if response.data != Value::Null {
        return;
    }
    for error in &mut response.errors {
        if error.path.is_empty() {
            let extensions = error.extensions.get_or_insert_with(Default::default);
            if extensions.get("code").is_none() {
                extensions.set("code", VALIDATION_FAILED);
            }
        }
    }
}

/// Aliases in every operation and fragment of the document (each fragment counted once).
fn count_aliases(document: &ExecutableDocument) -> usize {
    fn in_set(set: &SelectionSet) -> usize {
        set.items
            .iter()
            .map(|item| match &item.node {
                Selection::Field(field) => {
                    usize::from(field.node.alias.is_some()) + in_set(&field.node.selection_set.node)
                }
                Selection::InlineFragment(fragment) => in_set(&fragment.node.selection_set.node),
                Selection::FragmentSpread(_) => 0,
            })
            .sum()
    }
    document
        .operations
        .iter()
        .map(|(_, op)| in_set(&op.node.selection_set.node))
        .chain(
            document
                .fragments
                .values()
                .map(|f| in_set(&f.node.selection_set.node)),
        )
        .sum()
}
