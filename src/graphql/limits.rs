//! Query limits async-graphql lacks (aliases), and the error codes of parse and validation
//! failures (`GRAPHQL_PARSE_FAILED`, `GRAPHQL_VALIDATION_FAILED`).

use std::sync::Arc;

use async_graphql::{
    ServerError, ServerResult, ValidationResult, Variables,
    extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextValidation},
    parser::types::{ExecutableDocument, Selection, SelectionSet},
};

/// `extensions.code` of a document that does not parse.
pub const PARSE_FAILED: &str = crate::error::ErrorCode::GraphqlParseFailed.as_str();
/// `extensions.code` of a document that breaks a validation rule or a limit.
pub const VALIDATION_FAILED: &str = crate::error::ErrorCode::GraphqlValidationFailed.as_str();

/// Installs the alias limit and the parse/validation error codes.
pub struct Limits {
    /// Most aliases allowed in one document.
    pub max_aliases: usize,
}

impl ExtensionFactory for Limits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(LimitsExtension {
            max_aliases: self.max_aliases,
        })
    }
}

struct LimitsExtension {
    max_aliases: usize,
}

/// Gives an error a code unless it already has one.
pub fn with_code(mut err: ServerError, code: &str) -> ServerError {
    let extensions = err.extensions.get_or_insert_with(Default::default);
    if extensions.get("code").is_none() {
        extensions.set("code", code);
    }
    err
}

#[async_trait::async_trait]
impl Extension for LimitsExtension {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await.map_err(|e| {
            // The parser itself enforces the directive limit (CVE-2024-47614); that is a limit
            // the document broke, not a syntax error, so it is reported like the other limits.
            let code = if e.message.contains("number of directives") {
                VALIDATION_FAILED
            } else {
                PARSE_FAILED
            };
            with_code(e, code)
        })?;
        let aliases = count_aliases(&document);
        if aliases > self.max_aliases {
            return Err(with_code(
                ServerError::new(
                    format!(
                        "Query has too many aliases: {aliases}, the limit is {}",
                        self.max_aliases
                    ),
                    None,
                ),
                VALIDATION_FAILED,
            ));
        }
        Ok(document)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx).await.map_err(|errors| {
            errors
                .into_iter()
                .map(|e| with_code(e, VALIDATION_FAILED))
                .collect()
        })
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
