//! Reading a GraphQL request off HTTP: the body (bounded, drained when too large), the CSRF
//! rule for POSTs, the JSON request object and the URL parameters of a GET, each parameter
//! type-checked as GraphQL over HTTP requires.

use async_graphql::{BatchRequest, parser::types::OperationType};
use axum::{
    body::{Body, Bytes},
    http::{HeaderMap, header},
};

/// An oversized body is read on (and thrown away) up to this many bytes …
const DRAIN_BYTES: usize = 16 * 1024 * 1024;
/// … or for this long, so that a client still sending it reads the 413 instead of a
/// connection reset (closing a socket with unread data makes the kernel answer with RST).
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// The body, if it is at most `max` bytes; otherwise `Err` after draining a bounded amount.
pub(super) async fn read_body(body: Body, max: usize) -> Result<Bytes, ()> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut collected = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ())?;
        if collected.len() + chunk.len() > max {
            let mut drained = collected.len() + chunk.len();
            let deadline = tokio::time::Instant::now() + DRAIN_TIME;
            while drained <= DRAIN_BYTES {
                match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(Some(Ok(chunk))) => drained += chunk.len(),
                    _ => break,
                }
            }
            return Err(());
        }
        collected.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(collected))
}

/// Browsers send "simple" cross-site POSTs (text/plain, form encodings) without a preflight.
/// Only JSON bodies, or requests carrying a header that forces a preflight, are accepted.
pub(super) fn check_csrf(headers: &HeaderMap) -> Result<(), String> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let is_json = essence.eq_ignore_ascii_case("application/json")
        || essence.eq_ignore_ascii_case("application/graphql-response+json");
    let preflighted = headers.contains_key("apollo-require-preflight")
        || headers.contains_key("x-apollo-operation-name");
    if is_json || preflighted {
        Ok(())
    } else {
        Err(format!(
            "refused a POST with Content-Type `{content_type}`: send `Content-Type: application/json` \
             (or an `apollo-require-preflight` header) — this protects against cross-site request forgery"
        ))
    }
}

/// A POST body: one request object or a non-empty array of them (a batch).
pub(super) fn parse_body(bytes: &Bytes) -> Result<BatchRequest, String> {
    if bytes.is_empty() {
        return Err("the request body is empty: send {\"query\": \"...\"}".into());
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("the request body is not JSON: {e}"))?;
    match value {
        serde_json::Value::Array(items) if items.is_empty() => {
            Err("a batch must hold at least one operation".into())
        }
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(request_from_json)
            .collect::<Result<Vec<_>, _>>()
            .map(BatchRequest::Batch),
        other => request_from_json(other).map(BatchRequest::Single),
    }
}

/// One GraphQL request from its JSON object, checking each parameter's type as GraphQL over
/// HTTP requires: `query` a string (it may be left out only when
/// `extensions.persistedQuery` names it), `operationName` a string, `variables` and
/// `extensions` maps; any of the last three may be null.
fn request_from_json(value: serde_json::Value) -> Result<async_graphql::Request, String> {
    use serde_json::Value;
    let Value::Object(mut object) = value else {
        return Err("a GraphQL request must be a JSON object: {\"query\": \"...\"}".into());
    };
    let extensions = match object.remove("extensions") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(map)) => map,
        Some(_) => return Err("`extensions` must be a map (a JSON object)".into()),
    };
    let query = match object.remove("query") {
        Some(Value::String(query)) => query,
        None | Some(Value::Null) if extensions.contains_key("persistedQuery") => String::new(),
        None | Some(Value::Null) => {
            return Err("the request has no `query`: send {\"query\": \"...\"}".into());
        }
        Some(_) => return Err("`query` must be a string".into()),
    };
    let mut request = async_graphql::Request::new(query);
    request.operation_name = match object.remove("operationName") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => Some(name).filter(|n| !n.is_empty()),
        Some(_) => return Err("`operationName` must be a string".into()),
    };
    match object.remove("variables") {
        None | Some(Value::Null) => {}
        Some(variables @ Value::Object(_)) => {
            request.variables = async_graphql::Variables::from_json(variables);
        }
        Some(_) => return Err("`variables` must be a map (a JSON object)".into()),
    }
    for (name, value) in extensions {
        let value = async_graphql::Value::from_json(value)
            .map_err(|e| format!("`extensions.{name}` is invalid: {e}"))?;
        request.extensions.insert(name, value);
    }
    Ok(request)
}

/// A GraphQL request from URL parameters, as GraphQL over HTTP names them (`query`,
/// `operationName`, JSON-encoded `variables` and `extensions`), checked like a POST body.
/// async-graphql's own parser expects `operation_name`, which no client sends.
pub(super) fn parse_query_string(query: &str) -> Result<async_graphql::Request, String> {
    #[derive(serde::Deserialize)]
    struct Params {
        query: Option<String>,
        #[serde(rename = "operationName", alias = "operation_name")]
        operation_name: Option<String>,
        variables: Option<String>,
        extensions: Option<String>,
    }
    let params: Params =
        serde_urlencoded::from_str(query).map_err(|e| format!("invalid query string: {e}"))?;
    let json = |name: &str, raw: Option<String>| -> Result<serde_json::Value, String> {
        raw.filter(|r| !r.is_empty())
            .map(|r| serde_json::from_str(&r).map_err(|e| format!("`{name}` is not JSON: {e}")))
            .transpose()
            .map(Option::unwrap_or_default)
    };
    let mut object = serde_json::Map::new();
    if let Some(query) = params.query {
        object.insert("query".into(), query.into());
    }
    if let Some(name) = params.operation_name {
        object.insert("operationName".into(), name.into());
    }
    object.insert("variables".into(), json("variables", params.variables)?);
    object.insert("extensions".into(), json("extensions", params.extensions)?);
    request_from_json(serde_json::Value::Object(object))
}

/// The kind of the operation a GET request would run: the one named by `operationName`, or
/// the only one. `None` when the query does not parse or names no single operation (execution
/// then fails with the usual error). The parse is kept in the request, so execution does not
/// parse again.
pub(super) fn operation_kind(request: &mut async_graphql::Request) -> Option<OperationType> {
    let operation_name = request.operation_name.clone();
    let document = request.parsed_query().ok()?;
    let mut operations = document.operations.iter();
    match operation_name.as_deref() {
        Some(name) => operations
            .find(|(op_name, _)| op_name.map(|n| n.as_str()) == Some(name))
            .map(|(_, op)| op.node.ty),
        None => match (operations.next(), operations.next()) {
            (Some((_, op)), None) => Some(op.node.ty),
            _ => None,
        },
    }
}
