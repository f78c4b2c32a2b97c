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
///
/// An argument whose value async-graphql could not read as its type (a `null` inside a list of
/// non-null items, say) fails at its field, with a path but without a code: such errors (their
/// message ends `(occurred while parsing "<type>")`) are `BAD_USER_INPUT`.
pub fn code_request_errors(response: &mut Response) {
    let refused = response.data == Value::Null;
    for error in &mut response.errors {
        let code = if error.path.is_empty() && refused {
            VALIDATION_FAILED
        } else if error.message.contains("(occurred while parsing \"") {
            "BAD_USER_INPUT"
        } else {
            continue;
        };
        let extensions = error.extensions.get_or_insert_with(Default::default);
        if extensions.get("code").is_none() {
            extensions.set("code", code);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_argument_that_failed_to_parse_at_its_field_is_bad_user_input() {
        let mut error = async_graphql::ServerError::new(
            "Expected input type \"UsageGroup\", found null. (occurred while parsing \"[UsageGroup!]\")",
            None,
        );
        error.path = vec![async_graphql::PathSegment::Field("me".into())];
        let other = async_graphql::ServerError::new("something else", None);
        let mut response = Response::from_errors(vec![error, other]);
        response.data =
            async_graphql::Value::from_json(serde_json::json!({"me": null})).expect("a JSON value");
        code_request_errors(&mut response);
        let code = |i: usize| {
            response.errors[i]
                .extensions
                .as_ref()
                .and_then(|e| e.get("code").cloned())
        };
        assert_eq!(code(0), Some(async_graphql::Value::from("BAD_USER_INPUT")));
        assert_eq!(code(1), None, "other errors keep their own codes");
    }
}
