//! What a field's selection shows, read from the query document in place.
//!
//! async-graphql's `Lookahead` builds a list of matching fields at every step; a page of 50
//! agents asks, for each agent's runs, which of their columns and whether `hasNextPage` are
//! shown, about twenty steps per agent. These walk the selection (through fragment spreads
//! and inline fragments, whatever their type condition, as `Lookahead` does) without
//! allocating, and stop at the first match.

use async_graphql::{
    Context,
    parser::types::{Field, Selection, SelectionSet},
};

/// Whether the field `ctx` resolves selects, at `path` below it (field names, not aliases),
/// any field named in `names`: `shows(ctx, &["pageInfo"], &["hasNextPage"])`.
pub fn shows(ctx: &Context<'_>, path: &[&str], names: &[&str]) -> bool {
    under(ctx, &ctx.item.node.selection_set.node, path, names)
}

fn under(ctx: &Context<'_>, set: &SelectionSet, path: &[&str], names: &[&str]) -> bool {
    any_field(ctx, set, &mut |field| match path.split_first() {
        None => names.contains(&field.name.node.as_str()),
        Some((first, rest)) => {
            field.name.node == *first && under(ctx, &field.selection_set.node, rest, names)
        }
    })
}

/// Whether any field selected directly in `set` (or in its fragments) passes `test`.
fn any_field(ctx: &Context<'_>, set: &SelectionSet, test: &mut dyn FnMut(&Field) -> bool) -> bool {
    set.items.iter().any(|selection| match &selection.node {
        Selection::Field(field) => test(&field.node),
        Selection::InlineFragment(inline) => any_field(ctx, &inline.node.selection_set.node, test),
        Selection::FragmentSpread(spread) => ctx
            .query_env
            .fragments
            .get(&spread.node.fragment_name.node)
            .is_some_and(|fragment| any_field(ctx, &fragment.node.selection_set.node, test)),
    })
}
