//! Observability of GraphQL: operations by name and outcome. (Active subscriptions are counted
//! by the WebSocket transport as it admits and ends operations, which costs nothing per event;
//! a schema extension would add a layer to every field of every event for every subscriber.)

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
};

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

/// Most operation names whose counters one thread keeps (past it, the counter is looked up in
/// the registry each time, as `metrics::counter!` does).
const MAX_KEPT_PER_THREAD: usize = MAX_OPERATION_NAMES + 2;

/// Counts one executed operation. The counters (ok, error) of a name are kept per thread:
/// looking one up in the registry builds its key and the label anew on every call.
pub fn record_operation(name: Option<&str>, ok: bool) {
    thread_local! {
        static COUNTERS: std::cell::RefCell<HashMap<String, [metrics::Counter; 2]>> =
            std::cell::RefCell::new(HashMap::new());
    }
    let name = name.filter(|n| !n.is_empty()).unwrap_or("");
    let counters = COUNTERS.with_borrow_mut(|kept| {
        if let Some(counters) = kept.get(name) {
            return counters.clone();
        }
        let label = operation_label(Some(name).filter(|n| !n.is_empty()));
        let counters = ["ok", "error"].map(|outcome| {
            metrics::counter!(names::GRAPHQL_OPERATIONS, "operation" => label.clone(), "outcome" => outcome)
        });
        // Only names that are their own label (or `anonymous`) are kept: names counted as
        // `other` (malformed, too long, past the cap) must not fill the map with junk keys.
        let own_label = label == name || (name.is_empty() && label == "anonymous");
        if own_label && kept.len() < MAX_KEPT_PER_THREAD {
            kept.insert(name.to_owned(), counters.clone());
        }
        counters
    });
    counters[usize::from(!ok)].increment(1);
}
