//! Eager field resolution for objects that appear many times in one response (the runs of a
//! page of agents, their keys).
//!
//! async-graphql resolves every field of every object as a boxed future in a
//! `FuturesUnordered`, even a field that only copies a column: the W3 profile (50 agents with
//! their key and 5 runs each, ~2,000 fields) spent about 28% of the CPU in that machinery. An
//! [`Eager`] object polls each field's resolver once, in place: the fields that are ready at
//! once (plain values) go straight into the response; only those that wait (a DataLoader, a
//! query) are built again as futures and awaited together. Same resolvers, same values, same
//! errors — and the response keeps the order of the selection, as the GraphQL specification
//! asks (async-graphql's own order is the order in which fields finish).
//!
//! Anything unusual falls back to async-graphql's own resolution, which gives the same result:
//! a response key selected twice (async-graphql merges the sub-selections), a fragment on
//! another type, a directive left on a field after `@skip`/`@include` were applied. The schema
//! registers no extensions; one with per-field hooks would need this fallback too.

use std::{
    borrow::Cow,
    pin::pin,
    task::{Context as TaskContext, Poll, Waker},
};

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

/// One selected field: its value, its error, or the field to resolve later.
enum Slot<'a> {
    Ready(Value),
    Failed(async_graphql::ServerError),
    Waiting(&'a Positioned<Field>),
}

async fn resolve_eagerly<T: ContainerType>(
    ctx: &ContextSelectionSet<'_>,
    root: &T,
) -> ServerResult<Value> {
    let mut slots = Vec::with_capacity(ctx.item.node.items.len());
    if !collect(ctx, &ctx.item.node, root, &mut slots) {
        return resolve_container(ctx, root).await;
    }
    let waiting = slots.iter().filter_map(|(_, slot)| match slot {
        Slot::Waiting(field) => {
            Some(async move { root.resolve_field(&ctx.with_field(field)).await })
        }
        Slot::Ready(_) | Slot::Failed(_) => None,
    });
    let mut late = futures_util::future::join_all(waiting).await.into_iter();
    let mut object = IndexMap::with_capacity(slots.len());
    for (key, slot) in slots {
        match slot {
            Slot::Ready(value) => {
                object.insert(key, value);
            }
            // As async-graphql does: the error is recorded, the key left out.
            Slot::Failed(error) => ctx.add_error(error),
            Slot::Waiting(_) => match late.next() {
                Some(Ok(value)) => {
                    object.insert(key, value.unwrap_or_default());
                }
                Some(Err(error)) => ctx.add_error(error),
                None => {}
            },
        }
    }
    Ok(if object.is_empty() {
        Value::Null
    } else {
        Value::Object(object)
    })
}

/// Gathers the fields of `set` (and of fragments on `T`) into `slots`, resolving those that are
/// ready on the first poll; false when the selection needs async-graphql's own resolution.
fn collect<'a, T: ContainerType>(
    ctx: &ContextSelectionSet<'a>,
    set: &'a SelectionSet,
    root: &T,
    slots: &mut Vec<(Name, Slot<'a>)>,
) -> bool {
    for selection in &set.items {
        let (type_condition, fragment) = match &selection.node {
            Selection::Field(field) => {
                if !field.node.directives.is_empty() {
                    return false;
                }
                let key = field.node.response_key().node.clone();
                if slots.iter().any(|(seen, _)| *seen == key) {
                    return false;
                }
                let slot = if field.node.name.node == "__typename" {
                    Slot::Ready(Value::String(root.introspection_type_name().into_owned()))
                } else {
                    match poll_once(root, &ctx.with_field(field)) {
                        Some(Ok(value)) => Slot::Ready(value.unwrap_or_default()),
                        Some(Err(error)) => Slot::Failed(error),
                        None => Slot::Waiting(field),
                    }
                };
                slots.push((key, slot));
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
            || !collect(ctx, fragment, root, slots)
        {
            return false;
        }
    }
    true
}

/// Polls a field's resolver once; `None` when it is not ready (it is dropped: resolvers only
/// read, so building it again later is safe, and a DataLoader key it registered is simply
/// asked for again in the same batch).
fn poll_once<T: ContainerType>(
    root: &T,
    ctx: &async_graphql::Context<'_>,
) -> Option<ServerResult<Option<Value>>> {
    let future = pin!(root.resolve_field(ctx));
    match future.poll(&mut TaskContext::from_waker(Waker::noop())) {
        Poll::Ready(result) => Some(result),
        Poll::Pending => None,
    }
}
