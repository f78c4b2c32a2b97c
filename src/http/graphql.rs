//! GraphQL over HTTP: `POST /graphql` (JSON, batches), `GET /graphql` (queries, GraphiQL, and
//! the WebSocket upgrade). Authentication, CSRF, batch and rate limits happen here, before
//! anything executes; every error leaves with `extensions.requestId`.

use std::net::SocketAddr;

use async_graphql::{
    BatchRequest, BatchResponse, Executor, ServerError, parser::types::OperationType,
};
use axum::{
    body::{Body, Bytes},
    extract::{ConnectInfo, FromRequest, Request, State, ws::WebSocketUpgrade},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
};

use crate::{
    error::{AppError, ErrorCode},
    graphql::limits::{PARSE_FAILED, VALIDATION_FAILED, with_code},
    http::{HttpState, RequestId},
    rate_limit::client_ip,
    request::{Identity, RequestContext, RequestMeta},
    users::sessions,
};

/// An oversized body is read on (and thrown away) up to this many bytes …
const DRAIN_BYTES: usize = 16 * 1024 * 1024;
/// … or for this long, so that a client still sending it reads the 413 instead of a
/// connection reset (closing a socket with unread data makes the kernel answer with RST).
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// The body, if it is at most `max` bytes; otherwise `Err` after draining a bounded amount.
async fn read_body(body: Body, max: usize) -> Result<Bytes, ()> {
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

/// `POST /graphql`: one operation or a batch, as JSON.
pub async fn post(
    State(http): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let request_id = request_id(&parts.extensions);
    let headers = parts.headers;
    let media = MediaType::negotiate(&headers);
    if let Err(message) = check_csrf(&headers) {
        return media.error(StatusCode::BAD_REQUEST, &request_id, PARSE_FAILED, message);
    }
    let bytes = match read_body(body, http.app.config.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(()) => {
            let mut response = media.error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &request_id,
                ErrorCode::PayloadTooLarge.as_str(),
                format!(
                    "request body exceeds {} bytes",
                    http.app.config.max_body_bytes
                ),
            );
            // What was not drained must not be read as the next request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    let batch = match parse_body(&bytes) {
        Ok(batch) => batch,
        Err(message) => {
            return media.error(StatusCode::BAD_REQUEST, &request_id, PARSE_FAILED, message);
        }
    };
    // Persisted queries are resolved (and stored) in `execute`, after the batch-size and
    // rate-limit checks: a refused request stores nothing.
    execute(&http, peer, &headers, request_id, media, batch).await
}

/// `GET /graphql`: a WebSocket upgrade, GraphiQL for a browser, or a query in the URL.
/// Mutations are refused with 405: GET must never change anything.
pub async fn get(
    State(http): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let request_id = request_id(&parts.extensions);
    if parts.headers.contains_key(header::UPGRADE) {
        let meta = request_meta(&http, peer, &parts.headers, request_id.clone());
        let origin = parts
            .headers
            .get(header::ORIGIN)
            .map(|o| o.to_str().unwrap_or("<invalid>").to_owned())
            // A page this server served (GraphiQL) is same-origin, allowlisted or not.
            .filter(|origin| !is_same_origin(origin, &parts.headers));
        return match WebSocketUpgrade::from_request(Request::from_parts(parts, body), &()).await {
            Ok(upgrade) => super::ws::upgrade(http, upgrade, origin, meta).await,
            Err(rejection) => rejection.into_response(),
        };
    }
    let query = parts.uri.query().unwrap_or_default().to_owned();
    if query.is_empty() && wants_html(&parts.headers) && http.app.config.graphiql_enabled() {
        return Html(graphiql()).into_response();
    }
    let media = MediaType::negotiate(&parts.headers);
    let request = match parse_query_string(&query) {
        Ok(request) => request,
        Err(message) => {
            return media.error(StatusCode::BAD_REQUEST, &request_id, PARSE_FAILED, message);
        }
    };
    // A persisted query resolves to its text here, so the mutation check below sees it.
    let mut request = match http.persisted.resolve(request) {
        Ok(request) => request,
        Err(err) => return persisted_error(media, &request_id, err),
    };
    if operation_kind(&mut request).is_some_and(|kind| kind != OperationType::Query) {
        let mut response = media.error(
            StatusCode::METHOD_NOT_ALLOWED,
            &request_id,
            ErrorCode::MethodNotAllowed.as_str(),
            "mutations and subscriptions cannot be sent with GET: use POST (or a WebSocket)".into(),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let headers = std::mem::take(&mut parts.headers);
    execute(
        &http,
        peer,
        &headers,
        request_id,
        media,
        BatchRequest::Single(request),
    )
    .await
}

/// Authenticates, rate-limits and runs a (batch) request, then decorates the response.
async fn execute(
    http: &HttpState,
    peer: SocketAddr,
    headers: &HeaderMap,
    request_id: String,
    media: MediaType,
    batch: BatchRequest,
) -> Response {
    let app = &http.app;
    let operations = batch.iter().count();
    if operations > app.config.max_batch {
        return media.error(
            StatusCode::BAD_REQUEST,
            &request_id,
            ErrorCode::BadUserInput.as_str(),
            format!(
                "a batch may hold at most {} operations (got {operations})",
                app.config.max_batch
            ),
        );
    }
    let meta = request_meta(http, peer, headers, request_id.clone());
    let identity = match bearer_token(headers) {
        None => Identity::Anonymous,
        Some(token) => match sessions::authenticate(app, token).await {
            Ok(identity) => identity,
            Err(err) => return app_error_response(media, &request_id, err),
        },
    };
    let context = RequestContext { meta, identity };
    let standing = match app.limiters.check_client(context.client_key(), operations) {
        Ok(standing) => standing,
        Err(err) => return app_error_response(media, &request_id, err),
    };
    let batch = match batch {
        BatchRequest::Single(request) => http.persisted.resolve(request).map(BatchRequest::Single),
        BatchRequest::Batch(requests) => requests
            .into_iter()
            .map(|request| http.persisted.resolve(request))
            .collect::<Result<Vec<_>, _>>()
            .map(BatchRequest::Batch),
    };
    let batch = match batch {
        Ok(batch) => batch,
        Err(err) => return persisted_error(media, &request_id, err),
    };
    let names: Vec<Option<String>> = batch.iter().map(|r| r.operation_name.clone()).collect();
    let batch = batch
        .data(context)
        .data(crate::graphql::loaders::Loaders::new(app));
    let response = http.schema.execute_batch(batch).await;
    let outcomes: Vec<bool> = match &response {
        BatchResponse::Single(r) => vec![r.errors.is_empty()],
        BatchResponse::Batch(rs) => rs.iter().map(|r| r.errors.is_empty()).collect(),
    };
    for (name, ok) in names.iter().zip(outcomes) {
        super::observe::record_operation(name.as_deref(), ok);
    }
    let mut response = finish(response, &request_id, media);
    let headers = response.headers_mut();
    for (name, value) in [
        ("ratelimit-limit", u64::from(standing.limit)),
        ("ratelimit-remaining", u64::from(standing.remaining)),
        ("ratelimit-reset", standing.reset_secs),
    ] {
        headers.insert(name, HeaderValue::from(value));
    }
    response
}

/// Adds `requestId` to every error, and turns a rate-limited operation into HTTP 429.
///
/// A single request that failed before execution (it did not parse, broke a validation rule,
/// or its variables did not coerce) is a *request error*: its response has no `data` entry,
/// and under `application/graphql-response+json` its status is 400 (GraphQL over HTTP);
/// under `application/json` it stays 200, as that media type's clients expect.
fn finish(mut response: BatchResponse, request_id: &str, media: MediaType) -> Response {
    let mut retry_after: Option<u64> = None;
    let responses: Vec<&mut async_graphql::Response> = match &mut response {
        BatchResponse::Single(r) => vec![r],
        BatchResponse::Batch(rs) => rs.iter_mut().collect(),
    };
    for single in responses {
        for error in &mut single.errors {
            let extensions = error.extensions.get_or_insert_with(Default::default);
            extensions.set("requestId", request_id);
            let rate_limited = extensions.get("code")
                == Some(&async_graphql::Value::from(ErrorCode::RateLimited.as_str()));
            if rate_limited
                && let Some(async_graphql::Value::Number(n)) = extensions.get("retryAfter")
            {
                let secs = n.as_u64().unwrap_or(1);
                retry_after = Some(retry_after.map_or(secs, |r| r.max(secs)));
            }
        }
    }
    let request_error = match &response {
        BatchResponse::Single(single) => is_request_error(single),
        BatchResponse::Batch(_) => false,
    };
    let mut http_response = if request_error {
        let status = match media {
            MediaType::GraphQLResponseJson => StatusCode::BAD_REQUEST,
            MediaType::Json => StatusCode::OK,
        };
        let mut body = serde_json::to_value(&response).unwrap_or_default();
        if let Some(object) = body.as_object_mut() {
            object.remove("data");
        }
        media.respond(status, &body)
    } else {
        media.respond(StatusCode::OK, &response)
    };
    if let Some(secs) = retry_after {
        *http_response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        http_response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    http_response
}

/// Whether a response is a GraphQL *request error*: no data, and every error one of the
/// parser's or the validator's (which also covers variable coercion).
fn is_request_error(response: &async_graphql::Response) -> bool {
    let request_codes = [
        async_graphql::Value::from(PARSE_FAILED),
        async_graphql::Value::from(VALIDATION_FAILED),
    ];
    response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|error| {
            error
                .extensions
                .as_ref()
                .and_then(|extensions| extensions.get("code"))
                .is_some_and(|code| request_codes.contains(code))
        })
}

/// The media type of a GraphQL response, chosen from the request's `Accept` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MediaType {
    /// `application/json`: the legacy type; GraphQL errors keep status 200.
    Json,
    /// `application/graphql-response+json` (GraphQL over HTTP): request errors are 400.
    GraphQLResponseJson,
}

impl MediaType {
    /// `application/graphql-response+json` when the client accepts it at least as much as
    /// `application/json`; otherwise (no `Accept`, `*/*`, `application/json`) JSON.
    fn negotiate(headers: &HeaderMap) -> Self {
        let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
            return Self::Json;
        };
        let mut graphql = None::<f32>;
        let mut json = None::<f32>;
        for range in accept.split(',') {
            let mut params = range.split(';');
            let essence = params
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            let quality = params
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let slot = match essence.as_str() {
                "application/graphql-response+json" => &mut graphql,
                "application/json" | "application/*" | "*/*" => &mut json,
                _ => continue,
            };
            *slot = Some(slot.map_or(quality, |q| q.max(quality)));
        }
        match (graphql, json) {
            (Some(g), j) if g > 0.0 && g >= j.unwrap_or(0.0) => Self::GraphQLResponseJson,
            _ => Self::Json,
        }
    }

    fn content_type(self) -> HeaderValue {
        match self {
            Self::Json => HeaderValue::from_static("application/json; charset=utf-8"),
            Self::GraphQLResponseJson => {
                HeaderValue::from_static("application/graphql-response+json; charset=utf-8")
            }
        }
    }

    /// `body` as JSON with this media type.
    fn respond(self, status: StatusCode, body: &impl serde::Serialize) -> Response {
        let mut response = json_response(status, body);
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, self.content_type());
        response
    }

    /// A request error (no `data`) with one error, for failures before execution.
    fn error(self, status: StatusCode, request_id: &str, code: &str, message: String) -> Response {
        let mut response = error_response(status, request_id, code, message);
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, self.content_type());
        response
    }
}

/// A persisted query that could not be resolved. `PERSISTED_QUERY_NOT_FOUND` is answered
/// with 200, as Apollo's link expects before it resends the full query; a wrong hash is 400.
fn persisted_error(
    media: MediaType,
    request_id: &str,
    err: super::persisted::PersistedQueryError,
) -> Response {
    let status = if err.code == super::persisted::NOT_FOUND_CODE {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    media.error(status, request_id, err.code, err.message)
}

/// A response carrying one error (for failures before execution), in GraphQL's shape: a
/// request error, so without a `data` entry.
pub fn error_response(
    status: StatusCode,
    request_id: &str,
    code: &str,
    message: String,
) -> Response {
    let mut error = with_code(ServerError::new(message, None), code);
    if let Some(extensions) = error.extensions.as_mut() {
        extensions.set("requestId", request_id);
    }
    json_response(status, &serde_json::json!({ "errors": [error] }))
}

/// A response for a service error raised before execution (authentication, rate limit).
fn app_error_response(media: MediaType, request_id: &str, err: AppError) -> Response {
    let code = err.code();
    let retry = match &err {
        AppError::RateLimited {
            retry_after_secs, ..
        } => Some(*retry_after_secs),
        _ => None,
    };
    let gql: async_graphql::Error = err.into();
    let mut error = gql.into_server_error(async_graphql::Pos::default());
    error.locations.clear();
    if let Some(extensions) = error.extensions.as_mut() {
        extensions.set("requestId", request_id);
    }
    let status = match code {
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::OK,
    };
    let mut response = media.respond(status, &async_graphql::Response::from_errors(vec![error]));
    if let Some(secs) = retry {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            )],
            Body::from(bytes),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "could not serialise a GraphQL response");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Browsers send "simple" cross-site POSTs (text/plain, form encodings) without a preflight.
/// Only JSON bodies, or requests carrying a header that forces a preflight, are accepted.
fn check_csrf(headers: &HeaderMap) -> Result<(), String> {
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
fn parse_body(bytes: &Bytes) -> Result<BatchRequest, String> {
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
fn parse_query_string(query: &str) -> Result<async_graphql::Request, String> {
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
/// then fails with the usual error).
/// The kind of operation the request runs, if its document parses (the parse is kept in the
/// request, so execution does not parse again).
fn operation_kind(request: &mut async_graphql::Request) -> Option<OperationType> {
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

/// Whether a browser's `Origin` is this server itself (scheme and the `Host` it asked for),
/// as when the GraphiQL page it served opens a subscription. Tokens travel in
/// `connection_init`, never in cookies, so this grants a page nothing it did not already hold.
fn is_same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

/// The GraphiQL release the playground page loads (from unpkg, with React 18). Pinned, so the
/// page is the same everywhere and the browser test can serve these exact files offline from
/// tests/js/node_modules (keep it equal to `graphiql` in tests/js/package.json).
pub const GRAPHIQL_VERSION: &str = "4.1.2";

/// The playground. Its fetcher merges the headers pane into the WebSocket `connection_init`
/// payload, so `{"Authorization": "Bearer …"}` there authenticates queries and subscriptions.
fn graphiql() -> String {
    async_graphql::http::GraphiQLSource::build()
        .version(GRAPHIQL_VERSION)
        .endpoint("/graphql")
        .subscription_endpoint("/graphql")
        .title("Agentry GraphiQL")
        .finish()
}

/// `Authorization: Bearer <token>`, if present.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn request_id(extensions: &http::Extensions) -> String {
    extensions
        .get::<RequestId>()
        .map(|id| id.0.clone())
        .unwrap_or_default()
}

/// Where the request came from.
pub fn request_meta(
    http: &HttpState,
    peer: SocketAddr,
    headers: &HeaderMap,
    request_id: String,
) -> RequestMeta {
    RequestMeta {
        request_id,
        ip: client_ip(peer.ip(), headers, &http.app.config.trusted_proxies),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
}
