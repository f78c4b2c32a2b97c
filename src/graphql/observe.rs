//! Observability of GraphQL: operations by name and outcome, and active subscriptions.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use async_graphql::{
    Response,
    extensions::{Extension, ExtensionContext, ExtensionFactory, NextSubscribe},
    futures_util::stream::BoxStream,
};
use futures_util::StreamExt;

use crate::telemetry::names;

/// Most distinct operation names kept as metric labels; later ones count as `other`, so clients
/// cannot grow the series without bound.
const MAX_OPERATION_NAMES: usize = 200;

/// The label for an operation name.
pub fn operation_label(name: Option<&str>) -> String {
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return "anonymous".into();
    };
    if name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return "other".into();
    }
    let Ok(mut seen) = SEEN.lock() else {
        return "other".into();
    };
    let seen = seen.get_or_insert_with(HashSet::new);
    if seen.contains(name) || seen.len() < MAX_OPERATION_NAMES {
        seen.insert(name.to_owned());
        name.to_owned()
    } else {
        "other".into()
    }
}

/// Counts one executed operation.
pub fn record_operation(name: Option<&str>, ok: bool) {
    metrics::counter!(
        names::GRAPHQL_OPERATIONS,
        "operation" => operation_label(name),
        "outcome" => if ok { "ok" } else { "error" }
    )
    .increment(1);
}

/// Tracks active subscriptions.
pub struct Observe;

impl ExtensionFactory for Observe {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ObserveExtension)
    }
}

struct ObserveExtension;

/// Decrements the active-subscription gauge when the subscription's stream is dropped.
struct Active;

impl Drop for Active {
    fn drop(&mut self) {
        metrics::gauge!(names::SUBSCRIPTIONS).decrement(1.0);
    }
}

impl Extension for ObserveExtension {
    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        metrics::gauge!(names::SUBSCRIPTIONS).increment(1.0);
        let active = Active;
        next.run(ctx, stream)
            .map(move |response| {
                let _alive = &active;
                response
            })
            .boxed()
    }
}
