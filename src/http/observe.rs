//! Observability of GraphQL: operations by name and outcome. (Active subscriptions are counted
//! by the WebSocket transport as it admits and ends operations, which costs nothing per event;
//! a schema extension would add a layer to every field of every event for every subscriber.)

use std::{collections::HashSet, sync::Mutex};

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
