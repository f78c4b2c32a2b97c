//! GraphQL over HTTP: `POST /graphql` (JSON, batches), `GET /graphql` (queries, GraphiQL, and
//! the WebSocket upgrade). Authentication, CSRF, batch and rate limits happen here, before
//! anything executes; every error leaves with `extensions.requestId`.

use std::net::SocketAddr;

use async_graphql::{BatchRequest, BatchResponse, ServerError, parser::types::OperationType};
use axum::{
    body::{Body, Bytes},
    extract::{ConnectInfo, FromRequest, Request, State, ws::WebSocketUpgrade},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
};

use crate::{
    error::{AppError, ErrorCode},
    graphql::limits::{PARSE_FAILED, with_code},
    rate_limit::client_ip,
    request::{Identity, RequestContext, RequestMeta},
    server::{HttpState, RequestId},
    users::sessions,
};

/// `POST /graphql`: one operation or a batch, as JSON.
pub async fn post(
    State(http): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let request_id = request_id(&parts.extensions);
    let headers = parts.headers;
    if let Err(message) = check_csrf(&headers) {
        return error_response(StatusCode::BAD_REQUEST, &request_id, PARSE_FAILED, message);
    }
    let bytes = match axum::body::to_bytes(body, http.app.config.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &request_id,
                "PAYLOAD_TOO_LARGE",
                format!(
                    "request body exceeds {} bytes",
                    http.app.config.max_body_bytes
                ),
            );
        }
    };
    let batch = match parse_body(&bytes) {
        Ok(batch) => batch,
        Err(message) => {
            return error_response(StatusCode::BAD_REQUEST, &request_id, PARSE_FAILED, message);
        }
    };
    execute(&http, peer, &headers, request_id, batch).await
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
            .map(|o| o.to_str().unwrap_or("<invalid>").to_owned());
        return match WebSocketUpgrade::from_request(Request::from_parts(parts, body), &()).await {
            Ok(upgrade) => super::ws::upgrade(http, upgrade, origin, meta).await,
            Err(rejection) => rejection.into_response(),
        };
    }
    let query = parts.uri.query().unwrap_or_default().to_owned();
    if query.is_empty() && wants_html(&parts.headers) && http.app.config.graphiql_enabled() {
        return Html(graphiql()).into_response();
    }
    let request = match parse_query_string(&query) {
        Ok(request) => request,
        Err(message) => {
            return error_response(StatusCode::BAD_REQUEST, &request_id, PARSE_FAILED, message);
        }
    };
    if operation_kind(&request).is_some_and(|kind| kind != OperationType::Query) {
        let mut response = error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &request_id,
            "METHOD_NOT_ALLOWED",
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
    batch: BatchRequest,
) -> Response {
    let app = &http.app;
    let operations = batch.iter().count();
    if operations > app.config.max_batch {
        return error_response(
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
            Err(err) => return app_error_response(&request_id, err),
        },
    };
    let context = RequestContext { meta, identity };
    if let Err(err) = app.limiters.check_client(context.client_key(), operations) {
        return app_error_response(&request_id, err);
    }
    let names: Vec<Option<String>> = batch.iter().map(|r| r.operation_name.clone()).collect();
    let batch = batch.data(context).data(super::loaders::Loaders::new(app));
    let response = http.schema.execute_batch(batch).await;
    let outcomes: Vec<bool> = match &response {
        BatchResponse::Single(r) => vec![r.errors.is_empty()],
        BatchResponse::Batch(rs) => rs.iter().map(|r| r.errors.is_empty()).collect(),
    };
    for (name, ok) in names.iter().zip(outcomes) {
        super::observe::record_operation(name.as_deref(), ok);
    }
    finish(response, &request_id)
}

/// Adds `requestId` to every error, and turns a rate-limited operation into HTTP 429.
fn finish(mut response: BatchResponse, request_id: &str) -> Response {
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
    let mut http_response = json_response(StatusCode::OK, &response);
    if let Some(secs) = retry_after {
        *http_response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        http_response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    http_response
}

/// A response carrying one error (for failures before execution), in GraphQL's shape.
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
    json_response(status, &async_graphql::Response::from_errors(vec![error]))
}

/// A response for a service error raised before execution (authentication, rate limit).
fn app_error_response(request_id: &str, err: AppError) -> Response {
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
    let mut response = json_response(status, &async_graphql::Response::from_errors(vec![error]));
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
                HeaderValue::from_static("application/json"),
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

fn parse_body(bytes: &Bytes) -> Result<BatchRequest, String> {
    if bytes.is_empty() {
        return Err("the request body is empty: send {\"query\": \"...\"}".into());
    }
    serde_json::from_slice::<BatchRequest>(bytes)
        .map_err(|e| format!("the request body is not a GraphQL request: {e}"))
}

/// A GraphQL request from URL parameters, as GraphQL over HTTP names them (`query`,
/// `operationName`, JSON-encoded `variables` and `extensions`). async-graphql's own parser
/// expects `operation_name`, which no client sends.
fn parse_query_string(query: &str) -> Result<async_graphql::Request, String> {
    #[derive(serde::Deserialize)]
    struct Params {
        #[serde(default)]
        query: String,
        #[serde(rename = "operationName", alias = "operation_name")]
        operation_name: Option<String>,
        variables: Option<String>,
        extensions: Option<String>,
    }
    let params: Params =
        serde_urlencoded::from_str(query).map_err(|e| format!("invalid query string: {e}"))?;
    let json = |name: &str, raw: Option<String>| -> Result<Option<serde_json::Value>, String> {
        raw.filter(|r| !r.is_empty())
            .map(|r| serde_json::from_str(&r).map_err(|e| format!("`{name}` is not JSON: {e}")))
            .transpose()
    };
    let mut request = async_graphql::Request::new(params.query);
    request.operation_name = params.operation_name.filter(|n| !n.is_empty());
    if let Some(variables) = json("variables", params.variables)? {
        request.variables = async_graphql::Variables::from_json(variables);
    }
    if let Some(extensions) = json("extensions", params.extensions)? {
        request.extensions = serde_json::from_value(extensions)
            .map_err(|e| format!("`extensions` is invalid: {e}"))?;
    }
    Ok(request)
}

/// The kind of the operation a GET request would run: the one named by `operationName`, or
/// the only one. `None` when the query does not parse or names no single operation (execution
/// then fails with the usual error).
fn operation_kind(request: &async_graphql::Request) -> Option<OperationType> {
    let document = async_graphql::parser::parse_query(&request.query).ok()?;
    let mut operations = document.operations.iter();
    match request.operation_name.as_deref() {
        Some(name) => operations
            .find(|(op_name, _)| op_name.map(|n| n.as_str()) == Some(name))
            .map(|(_, op)| op.node.ty),
        None => match (operations.next(), operations.next()) {
            (Some((_, op)), None) => Some(op.node.ty),
            _ => None,
        },
    }
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

fn graphiql() -> String {
    async_graphql::http::GraphiQLSource::build()
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
