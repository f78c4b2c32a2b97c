//! `GET /files/{id}`: downloads one of the caller's files, with the same bearer token as the
//! API and under the same per-client rate limit. Another user's file, a missing one and a bad
//! id all answer 404; the body is sent as an attachment (never rendered inline) with its
//! stored media type and `nosniff` (set for every response by the edge middleware).

use std::net::SocketAddr;

use axum::{
    extract::{ConnectInfo, Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::{
    error::AppError,
    files::service,
    http::{
        HttpState,
        graphql::{bearer_token, request_meta},
    },
    request::{Identity, RequestContext},
    users::sessions,
};

/// A JSON error body like the API's, with its HTTP status.
fn error(status: StatusCode, err: &AppError) -> Response {
    let body = serde_json::json!({
        "errors": [{"message": err.message(), "extensions": {"code": err.code().as_str()}}]
    });
    (status, axum::Json(body)).into_response()
}

/// `filename="…"` (ASCII fallback) and `filename*=UTF-8''…` (RFC 6266 / 5987).
fn disposition(name: &str) -> HeaderValue {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    HeaderValue::from_str(&format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// Downloads a file.
pub async fn download(
    State(http): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let app = &http.app;
    let identity = match bearer_token(&headers) {
        None => Identity::Anonymous,
        Some(token) => match sessions::authenticate(app, token).await {
            Ok(identity) => identity,
            Err(err) => return error(StatusCode::INTERNAL_SERVER_ERROR, &err),
        },
    };
    let context = RequestContext {
        meta: request_meta(&http, peer, &headers, String::new()),
        identity,
    };
    if let Err(err) = app.limiters.check_client(context.client_key(), 1) {
        return error(StatusCode::TOO_MANY_REQUESTS, &err);
    }
    let viewer = match context.viewer() {
        Ok(viewer) => viewer,
        Err(err) => return error(StatusCode::UNAUTHORIZED, &err),
    };
    let not_found = AppError::NotFound { what: "file" };
    let Ok(id) = uuid::Uuid::parse_str(&id) else {
        return error(StatusCode::NOT_FOUND, &not_found);
    };
    match service::download(&app.pool, viewer.id(), id).await {
        Ok((row, bytes)) => {
            let media = if service::is_text(&row.content_type) {
                format!("{}; charset=utf-8", row.content_type)
            } else {
                row.content_type.clone()
            };
            let media = HeaderValue::from_str(&media)
                .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
            (
                [
                    (header::CONTENT_TYPE, media),
                    (header::CONTENT_DISPOSITION, disposition(&row.name)),
                    (
                        header::CACHE_CONTROL,
                        HeaderValue::from_static("private, no-store"),
                    ),
                ],
                bytes,
            )
                .into_response()
        }
        Err(err @ AppError::NotFound { .. }) => error(StatusCode::NOT_FOUND, &err),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, &err),
    }
}
