//! GraphQL responses over HTTP: the media type negotiated from `Accept`, request errors
//! (400 under `application/graphql-response+json`, 200 under `application/json`), 429 with
//! `Retry-After` for a rate-limited operation, and `extensions.requestId` on every error.

use async_graphql::{BatchResponse, ServerError};
use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::{
    error::{AppError, ErrorCode},
    graphql::limits::{PARSE_FAILED, VALIDATION_FAILED, with_code},
};

/// Adds `requestId` to every error, and turns a rate-limited operation into HTTP 429.
///
/// A single request that failed before execution (it did not parse, broke a validation rule,
/// or its variables did not coerce) is a *request error*: its response has no `data` entry,
/// and under `application/graphql-response+json` its status is 400 (GraphQL over HTTP);
/// under `application/json` it stays 200, as that media type's clients expect.
pub(super) fn finish(mut response: BatchResponse, request_id: &str, media: MediaType) -> Response {
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
pub(super) enum MediaType {
    /// `application/json`: the legacy type; GraphQL errors keep status 200.
    Json,
    /// `application/graphql-response+json` (GraphQL over HTTP): request errors are 400.
    GraphQLResponseJson,
}

impl MediaType {
    /// `application/graphql-response+json` when the client accepts it at least as much as
    /// `application/json`; otherwise (no `Accept`, `*/*`, `application/json`) JSON.
    pub(super) fn negotiate(headers: &HeaderMap) -> Self {
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
    pub(super) fn error(
        self,
        status: StatusCode,
        request_id: &str,
        code: &str,
        message: String,
    ) -> Response {
        let mut response = error_response(status, request_id, code, message);
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, self.content_type());
        response
    }
}

/// A persisted query that could not be resolved. `PERSISTED_QUERY_NOT_FOUND` is answered
/// with 200, as Apollo's link expects before it resends the full query; a wrong hash is 400.
pub(super) fn persisted_error(
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
fn error_response(status: StatusCode, request_id: &str, code: &str, message: String) -> Response {
    let mut error = with_code(ServerError::new(message, None), code);
    if let Some(extensions) = error.extensions.as_mut() {
        extensions.set("requestId", request_id);
    }
    json_response(status, &serde_json::json!({ "errors": [error] }))
}

/// A response for a service error raised before execution (authentication, rate limit).
pub(super) fn app_error_response(media: MediaType, request_id: &str, err: AppError) -> Response {
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
