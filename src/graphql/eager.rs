//! Eager field resolution for objects that appear many times in one response (a page of
//! agents, their keys and their runs).
//!
//! async-graphql resolves every field of every object as a boxed future in a
//! `FuturesUnordered`, even a field that only copies a column: the W3 profile (50 agents with
//! their key and 5 runs each, ~2,000 fields) showed that machinery and the allocator at the top.
//! An [`Eager`] object runs its fields' resolvers together in one `join_all`: one allocation
//! for all of them, each polled in place, the plain ones done on the first poll. Same
//! resolvers, same values, same errors — and the response keeps the order of the selection, as
//! the GraphQL specification asks (async-graphql's own order is the order in which fields
//! finish).
//!
//! Each field's future is as large as the object's largest field's (the generated
//! `resolve_field` is one future for every field), and a page builds thousands of them and
//! moves each into place: so a resolver with a heavy or rare load (a database read, a
//! DataLoader call) awaits it from the heap (`Box::pin`), keeping the other fields' futures
//! small (a run's were 2.3 KB, now 0.8 KB).
//!
//! Anything unusual falls back to async-graphql's own resolution, which gives the same result:
//! a response key selected twice (async-graphql merges the sub-selections), a fragment on
//! another type, a directive left on a field after `@skip`/`@include` were applied. The schema
//! registers no extensions; one with per-field hooks would need this fallback too.

use std::borrow::Cow;

use async_graphql::{
    ContainerType, ContextSelectionSet, Name, OutputType, Positioned, ServerResult, Value,
    indexmap::IndexMap,
    parser::types::{Field, Selection, SelectionSet},
    registry::Registry,
    resolver_utils::resolve_container,
};

/// `T` (an `#[Object]`), resolved eagerly. Its schema type is `T`'s: same name, fields and
/// documentation. Every list or connection of a type must use the same wrapping (async-graphql
/// refuses two Rust types behind one generated connection type name).
pub struct Eager<T>(pub T);

impl<T: ContainerType> OutputType for Eager<T> {
    fn type_name() -> Cow<'static, str> {
        T::type_name()
    }

    fn qualified_type_name() -> String {
        T::qualified_type_name()
    }

    fn introspection_type_name(&self) -> Cow<'static, str> {
        self.0.introspection_type_name()
    }

    fn create_type_info(registry: &mut Registry) -> String {
        T::create_type_info(registry)
    }

    async fn resolve(
        &self,
        ctx: &ContextSelectionSet<'_>,
        _field: &Positioned<Field>,
    ) -> ServerResult<Value> {
        resolve_eagerly(ctx, &self.0).await
    }
}

async fn resolve_eagerly<T: ContainerType>(
    ctx: &ContextSelectionSet<'_>,
    root: &T,
) -> ServerResult<Value> {
    let mut fields = Vec::with_capacity(ctx.item.node.items.len());
    if !collect(ctx, &ctx.item.node, root, &mut fields) {
        // From the heap: inline, this rare path's future would make every object's larger.
        return Box::pin(resolve_container(ctx, root)).await;
    }
    // Every field's future has the same type, so `join_all` keeps them all in one allocation
    // and polls them in order; the ones ready at once are done after the first poll.
    let resolved = futures_util::future::join_all(fields.iter().map(|(_, field)| async move {
        match field {
            Some(field) => root.resolve_field(&ctx.with_field(field)).await,
            None => Ok(Some(Value::String(
                root.introspection_type_name().into_owned(),
            ))),
        }
    }))
    .await;
    let mut object = IndexMap::with_capacity(fields.len());
    for ((key, _), value) in fields.into_iter().zip(resolved) {
        match value {
            Ok(value) => {
                object.insert(key, value.unwrap_or_default());
            }
            // As async-graphql does: the error is recorded, the key left out.
            Err(error) => ctx.add_error(error),
        }
    }
    Ok(if object.is_empty() {
        Value::Null
    } else {
        Value::Object(object)
    })
}

/// Gathers the fields of `set` (and of fragments on `T`) with their response keys (`None` for
/// `__typename`), without running anything; false when the selection needs async-graphql's
/// own resolution.
fn collect<'a, T: ContainerType>(
    ctx: &ContextSelectionSet<'a>,
    set: &'a SelectionSet,
    root: &T,
    fields: &mut Vec<(Name, Option<&'a Positioned<Field>>)>,
) -> bool {
    for selection in &set.items {
        let (type_condition, fragment) = match &selection.node {
            Selection::Field(field) => {
                if !field.node.directives.is_empty() {
                    return false;
                }
                let key = field.node.response_key().node.clone();
                if fields.iter().any(|(seen, _)| *seen == key) {
                    return false;
                }
                let typename = field.node.name.node == "__typename";
                fields.push((key, (!typename).then_some(field)));
                continue;
            }
            Selection::FragmentSpread(spread) => {
                let Some(fragment) = ctx.query_env.fragments.get(&spread.node.fragment_name.node)
                else {
                    return false;
                };
                (
                    Some(&fragment.node.type_condition.node.on.node),
                    &fragment.node.selection_set.node,
                )
            }
            Selection::InlineFragment(inline) => (
                inline
                    .node
                    .type_condition
                    .as_ref()
                    .map(|condition| &condition.node.on.node),
                &inline.node.selection_set.node,
            ),
        };
        if !selection.node.directives().is_empty()
            || type_condition.is_some_and(|on| on.as_str() != root.introspection_type_name())
            || !collect(ctx, fragment, root, fields)
        {
            return false;
        }
    }
    true
}
