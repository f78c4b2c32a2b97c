//! The shared lane for `executionEvents`: the transport serves the usual shape of this
//! subscription itself, so that each event is turned into JSON once per selection and copied
//! into every subscriber's message, instead of async-graphql resolving and serializing the event
//! once per subscriber.
//!
//! Why: a run watched by a thousand people publishes each event to a thousand subscriptions;
//! measured under that load, async-graphql's per-subscriber work (building the field stream,
//! resolving the event into a value tree, serializing it) was about a third of the server's CPU.
//!
//! What it serves: one anonymous or named subscription operation whose only root field is
//! `executionEvents(executionId:, after:)` (literals or variables of the declared types),
//! selecting plain fields of `ExecutionEvent` and `__typename` once each, with no alias,
//! directive, fragment, argument or extension anywhere, within the configured depth and
//! complexity. Everything else, and every request that would fail validation (a bad id, a
//! negative `after`, a variable of the wrong type), goes to async-graphql unchanged, which
//! answers it with its usual error. A run the viewer may not see (another user's) is refused by
//! the lane's stream with the error item async-graphql would send, then `complete`. The answers
//! are the same message for message: the lane builds the same `Response` async-graphql would,
//! from the same conversions, and an integration test compares the two paths' bytes.
//!
//! Authorization is the resolver's own: [`live::events`](crate::executions::live::events)
//! checks that the run is the viewer's before anything streams.

use std::{cell::RefCell, collections::VecDeque, pin::Pin, rc::Rc, sync::Arc};

use async_graphql::{
    InputType, Name, PathSegment, Pos, Response, ScalarType, Value as GqlValue,
    http::WebSocketProtocols,
    indexmap::IndexMap,
    parser::types::{BaseType, DocumentOperations, OperationType, Selection as GqlSelection},
};
use async_graphql_value::Value as QueryValue;
use futures_util::{Stream, StreamExt, stream};
use serde::Deserialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{
    error::AppResult,
    executions::{live, model::EventRow},
    request::Viewer,
    state::AppState,
};

/// The root field the lane serves.
const ROOT_FIELD: &str = "executionEvents";
/// The GraphQL type of its items.
const EVENT_TYPE: &str = "ExecutionEvent";

/// The schema's limits that could refuse a lane query (the lane's shape has no alias and no
/// directive, and its depth is 2).
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// `AGENTRY_MAX_QUERY_DEPTH`.
    pub(super) depth: usize,
    /// `AGENTRY_MAX_QUERY_COMPLEXITY` (each field counts 1).
    pub(super) complexity: usize,
}

/// A field of `ExecutionEvent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Typename,
    ExecutionId,
    Sequence,
    Kind,
    Delta,
    Data,
    At,
}

impl Field {
    /// Every field, in a fixed order (its index + 1 is its code in a [`Selection`]).
    const ALL: [Field; 7] = [
        Field::Typename,
        Field::ExecutionId,
        Field::Sequence,
        Field::Kind,
        Field::Delta,
        Field::Data,
        Field::At,
    ];

    /// The GraphQL name.
    const fn name(self) -> &'static str {
        match self {
            Field::Typename => "__typename",
            Field::ExecutionId => "executionId",
            Field::Sequence => "sequence",
            Field::Kind => "kind",
            Field::Delta => "delta",
            Field::Data => "data",
            Field::At => "at",
        }
    }

    fn code(self) -> u32 {
        Self::ALL
            .iter()
            .position(|f| *f == self)
            .map_or(0, |i| i as u32 + 1)
    }

    fn from_code(code: u32) -> Option<Field> {
        Self::ALL.get((code as usize).checked_sub(1)?).copied()
    }

    fn named(name: &str) -> Option<Field> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// The fields a subscriber selected, in the order selected (the answer's keys keep the
/// selection's order): three bits per field, the first selected in the lowest bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Selection(u32);

impl Selection {
    fn fields(self) -> impl Iterator<Item = Field> {
        let mut rest = self.0;
        std::iter::from_fn(move || {
            let field = Field::from_code(rest & 0b111)?;
            rest >>= 3;
            Some(field)
        })
    }
}

/// A subscribe message the lane can serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct EventsRequest {
    /// The run.
    pub(super) execution_id: Uuid,
    /// Resume after this sequence (0: from the start).
    pub(super) after: i32,
    /// What each event shows.
    pub(super) view: View,
}

/// The parts of a `subscribe` (or legacy `start`) message the lane reads.
#[derive(Deserialize)]
struct Subscribe {
    #[serde(rename = "type")]
    kind: String,
    /// Required, as async-graphql requires it (it closes the connection without one).
    #[serde(rename = "id")]
    _id: String,
    payload: Payload,
}

/// A GraphQL request as a WebSocket message carries it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    variables: Option<Value>,
    #[serde(default)]
    operation_name: Option<String>,
    #[serde(default)]
    extensions: Option<Value>,
}

/// The request of a subscribe message if the lane can serve it; `None` sends the message to
/// async-graphql. Only shapes whose validation cannot fail are accepted, so that async-graphql
/// would have run exactly this subscription.
pub(super) fn recognize(message: &[u8], limits: Limits) -> Option<EventsRequest> {
    let message: Subscribe = serde_json::from_slice(message).ok()?;
    if !matches!(message.kind.as_str(), "subscribe" | "start") {
        return None;
    }
    let payload = message.payload;
    // Persisted queries and other extensions are async-graphql's business.
    if payload
        .extensions
        .as_ref()
        .is_some_and(|e| !e.is_null() && e.as_object().is_none_or(|m| !m.is_empty()))
    {
        return None;
    }
    let variables = match payload.variables {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map,
        Some(_) => return None,
    };
    let document = async_graphql::parser::parse_query(payload.query?).ok()?;
    if !document.fragments.is_empty() {
        return None;
    }
    let (name, operation) = match &document.operations {
        DocumentOperations::Single(operation) => (None, operation),
        DocumentOperations::Multiple(operations) if operations.len() == 1 => {
            let (name, operation) = operations.iter().next()?;
            (Some(name.as_str()), operation)
        }
        DocumentOperations::Multiple(_) => return None,
    };
    if payload
        .operation_name
        .as_deref()
        .is_some_and(|wanted| Some(wanted) != name)
    {
        return None;
    }
    let operation = &operation.node;
    if operation.ty != OperationType::Subscription || !operation.directives.is_empty() {
        return None;
    }
    let [root] = operation.selection_set.node.items.as_slice() else {
        return None;
    };
    let GqlSelection::Field(root) = &root.node else {
        return None;
    };
    let pos = root.pos;
    let root = &root.node;
    if root.alias.is_some() || root.name.node != ROOT_FIELD || !root.directives.is_empty() {
        return None;
    }

    let (execution_id, after) = arguments(operation, root, &variables)?;
    Some(EventsRequest {
        execution_id,
        after,
        view: View {
            selection: selection(&root.selection_set.node.items, limits)?,
            pos,
        },
    })
}

/// The run and `after` of the root field's arguments, if they are exactly what validation
/// accepts: every declared variable used once by an argument of its type, no default, no
/// directive, no duplicate definition; the id a UUID and `after` 0 or more.
fn arguments(
    operation: &async_graphql::parser::types::OperationDefinition,
    root: &async_graphql::parser::types::Field,
    variables: &Map<String, Value>,
) -> Option<(Uuid, i32)> {
    // Every declared variable must be used, exactly once, by an argument of its type.
    let definitions = &operation.variable_definitions;
    let mut used = vec![false; definitions.len()];
    let mut argument = |value: &QueryValue, type_name: &str, non_null: bool| -> Option<Value> {
        match value {
            QueryValue::Variable(variable) => {
                let index = definitions
                    .iter()
                    .position(|d| d.node.name.node == *variable)?;
                let definition = &definitions[index].node;
                let ty = &definition.var_type.node;
                let BaseType::Named(declared) = &ty.base else {
                    return None;
                };
                // A nullable variable in a non-null position is a validation error; a
                // non-null one in a nullable position is fine.
                if declared.as_str() != type_name
                    || (non_null && ty.nullable)
                    || used[index]
                    || definition.default_value.is_some()
                    || !definition.directives.is_empty()
                {
                    return None;
                }
                used[index] = true;
                match variables.get(variable.as_str()) {
                    None | Some(Value::Null) if !ty.nullable => None,
                    None => Some(Value::Null),
                    Some(value) => Some(value.clone()),
                }
            }
            literal => literal.clone().into_json().ok(),
        }
    };
    let mut execution_id = None;
    let mut after = None;
    for (name, value) in &root.arguments {
        match name.node.as_str() {
            "executionId" if execution_id.is_none() => {
                let Value::String(id) = argument(&value.node, "ID", true)? else {
                    return None;
                };
                execution_id = Some(Uuid::parse_str(&id).ok()?);
            }
            "after" if after.is_none() => {
                after = Some(match argument(&value.node, "Int", false)? {
                    Value::Null => 0,
                    Value::Number(n) => i32::try_from(n.as_i64()?).ok()?,
                    _ => return None,
                });
            }
            _ => return None,
        }
    }
    if used.contains(&false) {
        return None;
    }
    let names: Vec<&str> = definitions
        .iter()
        .map(|d| d.node.name.node.as_str())
        .collect();
    if (1..names.len()).any(|i| names[..i].contains(&names[i])) {
        return None;
    }
    let after = after.unwrap_or(0);
    if after < 0 {
        return None; // async-graphql answers the BAD_INPUT error
    }
    Some((execution_id?, after))
}

/// The selection under the root field, if it is plain fields of `ExecutionEvent` (and
/// `__typename`), each once, with no alias, argument or directive, within the limits. The
/// limits are counted conservatively (`__typename` counts 1, which async-graphql does not
/// charge): a query near them goes to async-graphql, whose answer is the same either way.
fn selection(
    items: &[async_graphql::Positioned<GqlSelection>],
    limits: Limits,
) -> Option<Selection> {
    if items.is_empty()
        || items.len() > Field::ALL.len()
        || limits.depth < 2
        || limits.complexity < 1 + items.len()
    {
        return None;
    }
    let mut code = 0u32;
    let mut taken: Vec<Field> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let GqlSelection::Field(field) = &item.node else {
            return None;
        };
        let field = &field.node;
        if field.alias.is_some()
            || !field.arguments.is_empty()
            || !field.directives.is_empty()
            || !field.selection_set.node.items.is_empty()
        {
            return None;
        }
        let field = Field::named(field.name.node.as_str())?;
        if taken.contains(&field) {
            return None;
        }
        taken.push(field);
        code |= field.code() << (3 * i);
    }
    Some(Selection(code))
}

/// One message of a lane subscription.
pub(super) struct LaneMessage {
    /// The protocol message.
    pub(super) text: String,
    /// Whether it is the `complete` that ends the subscription.
    pub(super) last: bool,
}

/// One lane subscription: its protocol messages, the last one its `complete`.
pub(super) type LaneStream = Pin<Box<dyn Stream<Item = LaneMessage> + Send>>;

/// The events of the viewer's run as the resolver (`executionEvents` in `executions::graphql`)
/// streams them: checked and opened by [`live::events`] when first polled; a failed check is
/// the stream's one item, as async-graphql reports an error of the field's resolver.
pub(super) fn follow(
    state: AppState,
    viewer: Viewer,
    request: &EventsRequest,
) -> impl Stream<Item = AppResult<Arc<EventRow>>> + Send + 'static {
    let (id, after) = (request.execution_id, request.after);
    stream::once(async move { live::events(&state, &viewer, id, after).await }).flat_map(|opened| {
        match opened {
            Ok(events) => events.boxed(),
            Err(e) => stream::once(async move { Err(e) }).boxed(),
        }
    })
}

/// The messages of lane subscription `id`: one per event of `events` (or its error), then the
/// `complete` when the events end.
pub(super) fn lane(
    protocol: WebSocketProtocols,
    id: String,
    view: View,
    events: impl Stream<Item = AppResult<Arc<EventRow>>> + Send + 'static,
) -> LaneStream {
    let end = id.clone();
    Box::pin(
        events
            .map(move |item| LaneMessage {
                text: message(protocol, &id, view, Some(item)),
                last: false,
            })
            .chain(stream::once(async move {
                LaneMessage {
                    text: message(protocol, &end, view, None),
                    last: true,
                }
            })),
    )
}

/// What one subscriber of the lane shows of each event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct View {
    /// The fields selected.
    selection: Selection,
    /// The root field's position in the query (errors point at it, as async-graphql's do).
    pos: Pos,
}

/// Payloads rendered on this thread lately: (run, sequence, `at`, selection) → the `payload` JSON.
/// An event's content never changes once stored, so a rendering serves every subscriber of
/// the same selection; each worker thread renders an event at most once in the usual case.
const RENDERED_KEPT: usize = 64;
/// Larger payloads are rendered per subscriber rather than kept.
const RENDERED_MAX_BYTES: usize = 64 * 1024;

/// (run, sequence, when in nanoseconds, selection, payload). Runners stamp events with the
/// microsecond the table keeps (`event_time`), so a published event and its copy read back
/// from the table share a rendering; `at` stays in the key so that an event published by
/// anything else (a test, a future writer) can never be served another's text.
type Rendered = (Uuid, i32, i64, u32, Rc<str>);

/// The `payload` of the message for `event`, as async-graphql would serialize it.
fn payload(event: &EventRow, selection: Selection) -> Rc<str> {
    thread_local! {
        static RENDERED: RefCell<VecDeque<Rendered>> = const { RefCell::new(VecDeque::new()) };
    }
    let at = event.at.timestamp_nanos_opt().unwrap_or(i64::MIN);
    let key = (event.execution_id, event.sequence, at, selection.0);
    let found = RENDERED.with_borrow(|kept| {
        kept.iter()
            .rev()
            .find(|(run, sequence, at, sel, _)| (*run, *sequence, *at, *sel) == key)
            .map(|(.., json)| json.clone())
    });
    if let Some(json) = found {
        return json;
    }
    let json: Rc<str> = render(event, selection).into();
    if json.len() <= RENDERED_MAX_BYTES {
        RENDERED.with_borrow_mut(|kept| {
            if kept.len() == RENDERED_KEPT {
                kept.pop_front();
            }
            kept.push_back((key.0, key.1, key.2, key.3, json.clone()));
        });
    }
    json
}

/// Serializes the response async-graphql gives for `event` under this selection, built with
/// the same conversions its resolvers use (`ExecutionEvent` in `executions::graphql`).
fn render(event: &EventRow, selection: Selection) -> String {
    let mut object = IndexMap::new();
    for field in selection.fields() {
        let value = match field {
            // What `Eager<ExecutionEvent>` answers (the object type's name).
            Field::Typename => GqlValue::String(EVENT_TYPE.to_owned()),
            Field::ExecutionId => GqlValue::String(event.execution_id.to_string()),
            Field::Sequence => GqlValue::from(event.sequence),
            Field::Kind => InputType::to_value(&event.kind),
            Field::Delta => event
                .delta
                .as_ref()
                .map_or(GqlValue::Null, |d| GqlValue::String(d.clone())),
            Field::Data => event.data.as_ref().map_or(GqlValue::Null, |data| {
                async_graphql::to_value(data).unwrap_or_default()
            }),
            Field::At => ScalarType::to_value(&event.at),
        };
        object.insert(Name::new(field.name()), value);
    }
    let mut data = IndexMap::new();
    data.insert(Name::new(ROOT_FIELD), GqlValue::Object(object));
    response_json(&Response::new(GqlValue::Object(data)))
}

fn response_json(response: &Response) -> String {
    serde_json::to_string(response).unwrap_or_else(|_| r#"{"data":null}"#.to_owned())
}

/// The protocol message for one item of a lane subscription `id`: an event, an error (as
/// async-graphql reports a failing stream item), or the `complete` that ends it.
fn message(
    protocol: WebSocketProtocols,
    id: &str,
    view: View,
    item: Option<AppResult<Arc<EventRow>>>,
) -> String {
    let payload = match item {
        None => return complete(id),
        Some(Ok(event)) => payload(&event, view.selection),
        Some(Err(e)) => {
            let error = async_graphql::Error::from(e)
                .into_server_error(view.pos)
                .with_path(vec![PathSegment::Field(ROOT_FIELD.to_owned())]);
            response_json(&Response::from_errors(vec![error])).into()
        }
    };
    let id = json_string(id);
    let kind = match protocol {
        WebSocketProtocols::GraphQLWS => "next",
        WebSocketProtocols::SubscriptionsTransportWS => "data",
    };
    format!(r#"{{"type":"{kind}","id":{id},"payload":{payload}}}"#)
}

/// The `complete` message ending operation `id` (the same text async-graphql writes).
pub(super) fn complete(id: &str) -> String {
    format!(r#"{{"type":"complete","id":{}}}"#, json_string(id))
}

fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn subscribe(query: &str, variables: Value) -> Vec<u8> {
        json!({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": variables}})
            .to_string()
            .into_bytes()
    }

    const RUN: &str = "0190a0c4-7f6e-7a8b-9c0d-1e2f3a4b5c6d";
    const LIMITS: Limits = Limits {
        depth: 12,
        complexity: 5000,
    };

    #[test]
    fn the_usual_shapes_are_served_by_the_lane() {
        let usual = [
            (
                "subscription($id: ID!, $after: Int) { executionEvents(executionId: $id, after: $after) { sequence kind delta data } }",
                json!({"id": RUN, "after": 4}),
                4,
            ),
            (
                "subscription Watch($id: ID!) { executionEvents(executionId: $id) { delta } }",
                json!({"id": RUN}),
                0,
            ),
            (
                &format!(
                    r#"subscription {{ executionEvents(executionId: "{RUN}", after: 2) {{ at sequence }} }}"#
                ),
                Value::Null,
                2,
            ),
            (
                "subscription($id: ID!, $after: Int!) { executionEvents(after: $after, executionId: $id) { executionId } }",
                json!({"id": RUN, "after": 0}),
                0,
            ),
        ];
        for (query, variables, after) in usual {
            let request = recognize(&subscribe(query, variables), LIMITS)
                .unwrap_or_else(|| panic!("{query}"));
            assert_eq!(request.execution_id.to_string(), RUN);
            assert_eq!(request.after, after);
        }
        let request = recognize(
            &subscribe(
                "subscription($id: ID!) { executionEvents(executionId: $id) { data sequence kind __typename } }",
                json!({"id": RUN}),
            ),
            LIMITS,
        )
        .unwrap();
        let order: Vec<_> = request.view.selection.fields().map(Field::name).collect();
        assert_eq!(order, ["data", "sequence", "kind", "__typename"]);
    }

    #[test]
    fn everything_else_goes_to_async_graphql() {
        let events = "subscription($id: ID!) { executionEvents(executionId: $id) { sequence } }";
        let others: [(&str, Value); 17] = [
            (
                "subscription($id: ID!) { executionEvents(executionId: $id) { sequence @include(if: true) } }",
                json!({"id": RUN}),
            ),
            (
                "subscription($id: ID!) { executionEvents(executionId: $id) { s: sequence } }",
                json!({"id": RUN}),
            ),
            (
                "subscription($id: ID!) { e: executionEvents(executionId: $id) { sequence } }",
                json!({"id": RUN}),
            ),
            (
                "subscription($id: ID!) { executionEvents(executionId: $id) { sequence sequence } }",
                json!({"id": RUN}),
            ),
            (
                "subscription($id: ID!) { executionEvents(executionId: $id) { ...F } } fragment F on ExecutionEvent { sequence }",
                json!({"id": RUN}),
            ),
            (
                "subscription($id: ID!) { executionEvents(executionId: $id) { ... on ExecutionEvent { sequence } } }",
                json!({"id": RUN}),
            ),
            (
                "subscription($id: ID!) { executionUpdates { id } }",
                json!({"id": RUN}),
            ),
            (
                "subscription($id: ID) { executionEvents(executionId: $id) { sequence } }",
                json!({"id": RUN}),
            ),
            (
                "subscription($id: ID!, $x: Int) { executionEvents(executionId: $id) { sequence } }",
                json!({"id": RUN}),
            ),
            (
                "subscription($id: ID!, $a: String) { executionEvents(executionId: $id, after: $a) { sequence } }",
                json!({"id": RUN, "a": "1"}),
            ),
            (events, json!({})),
            (events, json!({"id": "not-a-uuid"})),
            (events, json!({"id": 7})),
            (
                "subscription($id: ID!, $a: Int) { executionEvents(executionId: $id, after: $a) { sequence } }",
                json!({"id": RUN, "a": -1}),
            ),
            (
                "subscription($id: ID!, $a: Int) { executionEvents(executionId: $id, after: $a) { sequence } }",
                json!({"id": RUN, "a": 1.5}),
            ),
            (
                "query($id: ID!) { execution(id: $id) { id } }",
                json!({"id": RUN}),
            ),
            (
                "subscription A($id: ID!) { executionEvents(executionId: $id) { sequence } } subscription B($id: ID!) { executionEvents(executionId: $id) { sequence } }",
                json!({"id": RUN}),
            ),
        ];
        for (query, variables) in others {
            assert_eq!(
                recognize(&subscribe(query, variables), LIMITS),
                None,
                "{query}"
            );
        }
        // A different operation name, extensions, or not a subscribe message.
        let named =
            "subscription Watch($id: ID!) { executionEvents(executionId: $id) { sequence } }";
        let with = |payload: Value| {
            json!({"id": "1", "type": "subscribe", "payload": payload}).to_string()
        };
        for message in [
            with(json!({"query": named, "variables": {"id": RUN}, "operationName": "Other"})),
            with(
                json!({"query": events, "variables": {"id": RUN}, "extensions": {"persistedQuery": {"version": 1}}}),
            ),
            with(json!({"variables": {"id": RUN}})),
            json!({"id": "1", "type": "complete"}).to_string(),
            // No id (async-graphql closes the connection for it).
            json!({"type": "subscribe", "payload": {"query": named, "variables": {"id": RUN}}})
                .to_string(),
            json!({"id": null, "type": "subscribe", "payload": {"query": named, "variables": {"id": RUN}}})
                .to_string(),
        ] {
            assert_eq!(recognize(message.as_bytes(), LIMITS), None, "{message}");
        }
        let watch =
            with(json!({"query": named, "variables": {"id": RUN}, "operationName": "Watch"}));
        assert!(recognize(watch.as_bytes(), LIMITS).is_some());
        // Limits async-graphql would refuse it under: depth 2, complexity 1 + the fields.
        for (depth, complexity) in [(1, 5000), (12, 1)] {
            assert_eq!(
                recognize(watch.as_bytes(), Limits { depth, complexity }),
                None
            );
        }
        assert!(
            recognize(
                watch.as_bytes(),
                Limits {
                    depth: 2,
                    complexity: 2
                }
            )
            .is_some()
        );
    }

    #[test]
    fn a_rendering_is_shared_only_by_the_same_event_and_selection() {
        let event = EventRow {
            execution_id: Uuid::parse_str(RUN).unwrap(),
            sequence: 3,
            kind: crate::executions::model::EventKind::OutputDelta,
            delta: Some("hi \"there\"".into()),
            data: None,
            at: chrono::Utc::now(),
        };
        let both = Selection(Field::Sequence.code() | (Field::Delta.code() << 3));
        let delta_only = Selection(Field::Delta.code());
        let first = payload(&event, both);
        assert!(
            Rc::ptr_eq(&first, &payload(&event, both)),
            "kept and shared"
        );
        assert_eq!(
            &*first,
            r#"{"data":{"executionEvents":{"sequence":3,"delta":"hi \"there\""}}}"#
        );
        assert_eq!(
            &*payload(&event, delta_only),
            r#"{"data":{"executionEvents":{"delta":"hi \"there\""}}}"#
        );
        let next = EventRow {
            sequence: 4,
            ..event
        };
        assert!(payload(&next, both).contains(r#""sequence":4"#));
    }
}
