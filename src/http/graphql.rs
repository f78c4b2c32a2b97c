//! GraphQL over HTTP: `POST /graphql` (JSON, batches, and multipart requests carrying file
//! uploads), `GET /graphql` (queries, GraphiQL, and the WebSocket upgrade). Authentication, CSRF, batch and rate limits happen here, before
//! anything executes; every error leaves with `extensions.requestId`. Reading the request is
//! in `body.rs`, shaping the response in `response.rs`.

use std::net::SocketAddr;

use async_graphql::{BatchRequest, BatchResponse, Executor, parser::types::OperationType};
use axum::{
    extract::{ConnectInfo, FromRequest, Request, State, ws::WebSocketUpgrade},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
};

use crate::{
    error::ErrorCode,
    graphql::limits::PARSE_FAILED,
    http::{
        HttpState, RequestId,
        body::{check_csrf, operation_kind, parse_body, parse_query_string, read_body},
        response::{MediaType, app_error_response, finish, persisted_error},
    },
    rate_limit::client_ip,
    request::{Identity, RequestContext, RequestMeta},
    users::sessions,
};

/// Most files one multipart request may carry.
const MAX_UPLOAD_FILES: usize = 5;
/// Room for a multipart request's boundaries and part headers, per file.
const MULTIPART_OVERHEAD: usize = 16 * 1024;

/// The `Content-Type` of a multipart request (GraphQL multipart request spec), if it is one.
fn multipart_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            v.split(';')
                .next()
                .is_some_and(|e| e.trim().eq_ignore_ascii_case("multipart/form-data"))
        })
}

/// `POST /graphql`: one operation or a batch, as JSON; or a multipart request with files
/// (which, like any non-JSON POST, needs a header that forces a CORS preflight).
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
    let config = &http.app.config;
    let multipart = multipart_type(&headers);
    // Files are checked one by one by `uploadFile` (a file just over its bound is refused
    // there, naming the rule); this only bounds what is read.
    let max_body = match multipart {
        Some(_) => {
            config.max_body_bytes
                + MAX_UPLOAD_FILES * (config.file_max_bytes + 1 + MULTIPART_OVERHEAD)
        }
        None => config.max_body_bytes,
    };
    let bytes = match read_body(body, max_body).await {
        Ok(bytes) => bytes,
        Err(()) => {
            let mut response = media.error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &request_id,
                ErrorCode::PayloadTooLarge.as_str(),
                format!("request body exceeds {max_body} bytes"),
            );
            // What was not drained must not be read as the next request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    let batch = match multipart {
        Some(content_type) => async_graphql::http::receive_batch_body(
            Some(content_type),
            bytes.as_ref(),
            async_graphql::http::MultipartOptions::default(),
        )
        .await
        .map_err(|e| format!("the multipart request is malformed: {e}"))
        .and_then(|batch| {
            // async-graphql's `max_num_files` only bounds the stream's bytes; count them here.
            let files: usize = batch.iter().map(|r| r.uploads.len()).sum();
            if files > MAX_UPLOAD_FILES {
                Err(format!(
                    "a multipart request may carry at most {MAX_UPLOAD_FILES} files (got {files})"
                ))
            } else {
                Ok(batch)
            }
        }),
        None => parse_body(&bytes),
    };
    let batch = match batch {
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
    let response = if app.config.otel_endpoint.is_some() {
        // With traces exported, the operation is a span of its own (only then: entering a
        // span on every poll of the resolvers is not free).
        let operation = match names.as_slice() {
            [one] => one.as_deref().unwrap_or("anonymous").to_owned(),
            many => format!("batch of {}", many.len()),
        };
        let span = tracing::info_span!(
            "graphql",
            otel.name = %format_args!("graphql {operation}"),
            graphql.operation.name = %operation,
        );
        tracing::Instrument::instrument(http.schema.execute_batch(batch), span).await
    } else {
        http.schema.execute_batch(batch).await
    };
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

/// The GraphiQL release of the playground (with React 18), served from the binary: the files in
/// assets/graphiql/ (keep it equal to `graphiql` in tests/js/package.json).
pub const GRAPHIQL_VERSION: &str = "4.1.2";

/// The playground's files, embedded at build time from the pinned npm releases in
/// assets/graphiql/ (their licenses beside them), so `/graphql` works with no internet: (name,
/// media type, bytes).
const GRAPHIQL_ASSETS: [(&str, &str, &[u8]); 4] = [
    (
        "graphiql.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/graphiql/graphiql.min.js"),
    ),
    (
        "graphiql.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/graphiql/graphiql.min.css"),
    ),
    (
        "react.production.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/graphiql/react.production.min.js"),
    ),
    (
        "react-dom.production.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/graphiql/react-dom.production.min.js"),
    ),
];

/// `GET /graphiql/{version}/{file}`: one of the playground's files, wherever the playground is
/// on; cached for a year (the version is in the path).
pub async fn graphiql_asset(
    State(http): State<HttpState>,
    axum::extract::Path((version, file)): axum::extract::Path<(String, String)>,
) -> Response {
    let asset = GRAPHIQL_ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .filter(|_| version == GRAPHIQL_VERSION && http.app.config.graphiql_enabled());
    match asset {
        Some((_, media_type, bytes)) => (
            [
                (header::CONTENT_TYPE, *media_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            *bytes,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The playground. Its fetcher merges the headers pane into the WebSocket `connection_init`
/// payload, so `{"Authorization": "Bearer …"}` there authenticates queries and subscriptions.
/// async-graphql's page loads its files from unpkg; here they come from this server
/// ([`graphiql_asset`]), and nothing else leaves it (no favicon from graphql.org).
fn graphiql() -> String {
    let page = async_graphql::http::GraphiQLSource::build()
        .version(GRAPHIQL_VERSION)
        .endpoint("/graphql")
        .subscription_endpoint("/graphql")
        .title("Agentry GraphiQL")
        .finish();
    let local = format!("/graphiql/{GRAPHIQL_VERSION}");
    page.replace(
        "https://unpkg.com/react@18/umd/react.development.js",
        &format!("{local}/react.production.min.js"),
    )
    .replace(
        "https://unpkg.com/react-dom@18/umd/react-dom.development.js",
        &format!("{local}/react-dom.production.min.js"),
    )
    .replace(
        &format!("https://unpkg.com/graphiql@{GRAPHIQL_VERSION}/"),
        &format!("{local}/"),
    )
    .replace(
        r#"<link rel="icon" href="https://graphql.org/favicon.ico">"#,
        "",
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_playground_loads_nothing_from_elsewhere_and_every_file_it_names_is_served() {
        let page = graphiql();
        assert!(
            !page.contains("https://"),
            "an off-site URL is left in the page"
        );
        let local = format!("/graphiql/{GRAPHIQL_VERSION}/");
        let named: Vec<&str> = page
            .match_indices(&local)
            .map(|(at, _)| {
                let rest = &page[at + local.len()..];
                &rest[..rest.find('"').unwrap_or(rest.len())]
            })
            .collect();
        assert_eq!(named.len(), 4, "{named:?}");
        for file in named {
            assert!(
                GRAPHIQL_ASSETS.iter().any(|(name, _, _)| *name == file),
                "{file} is not embedded"
            );
        }
    }
}
