//! The axum router: routes, layers (request id, security headers, CORS, body limit, timeout,
//! tracing), and serving with graceful shutdown.

use std::{net::SocketAddr, time::Duration};

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderName, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    serve::ListenerExt,
};
use tokio::net::TcpListener;
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    timeout::TimeoutLayer,
    trace::TraceLayer,
};

use crate::{
    http::{HttpShared, HttpState, REQUEST_ID, RequestId, graphql, persisted},
    schema,
    state::AppState,
    telemetry::names,
};

/// How often limiter memory is pruned.
const LIMITER_PRUNE_PERIOD: Duration = Duration::from_secs(60);

/// Builds the application router.
pub fn router(app: AppState) -> Router {
    let schema = schema::build_schema(&app);
    let config = app.config.clone();
    // Request spans carry OpenTelemetry's fields only when traces are exported.
    let traced = config.otel_endpoint.is_some();
    let http = HttpState::new(HttpShared {
        app: app.clone(),
        schema,
        persisted: persisted::PersistedQueries::new(persisted::CAPACITY),
    });

    Router::new()
        .route("/graphql", get(graphql::get).post(graphql::post))
        .route("/files/{id}", get(super::files::download))
        .route("/graphiql/{version}/{file}", get(graphql::graphiql_asset))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_endpoint))
        .with_state(http)
        // POST /graphql enforces AGENTRY_MAX_BODY_BYTES itself (answering 413 after draining,
        // not before reading; a multipart upload may add its files' bound); no other route reads
        // a body.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(config.request_timeout_secs),
        ))
        .layer(cors(&config.cors_origins))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(move |request: &Request| {
                    let id = request
                        .extensions()
                        .get::<RequestId>()
                        .map(|id| id.0.as_str())
                        .unwrap_or_default();
                    if !traced {
                        // No export: the plain span the logs need, nothing more per request.
                        return tracing::info_span!("http", method = %request.method(), path = %request.uri().path(), request.id = %id);
                    }
                    // The route, not the path (ids in paths would make every span name unique).
                    let route = request
                        .extensions()
                        .get::<axum::extract::MatchedPath>()
                        .map_or("other", |p| p.as_str());
                    let span = tracing::info_span!(
                        "http",
                        otel.name = %format_args!("{} {route}", request.method()),
                        otel.kind = "server",
                        method = %request.method(),
                        path = %request.uri().path(),
                        http.route = route,
                        http.response.status_code = tracing::field::Empty,
                        request.id = %id,
                        trace_id = tracing::field::Empty,
                    );
                    // With traces exported: join the caller's trace (`traceparent`), and put
                    // the trace id on the span so every JSON log line of the request has it.
                    crate::telemetry::join_remote_trace(&span, request.headers());
                    if let Some(trace_id) = crate::telemetry::trace_id(&span) {
                        span.record("trace_id", trace_id);
                    }
                    span
                })
                .on_response(
                    move |response: &axum::response::Response,
                          latency: Duration,
                          span: &tracing::Span| {
                        use tower_http::trace::OnResponse;
                        // tower-http's own "finished processing request" line, as before.
                        tower_http::trace::DefaultOnResponse::default()
                            .on_response(response, latency, span);
                        if !traced {
                            return;
                        }
                        span.record(
                            "http.response.status_code",
                            i64::from(response.status().as_u16()),
                        );
                    },
                ),
        )
        .layer(middleware::from_fn_with_state(
            Edge {
                production: config.is_production(),
            },
            edge,
        ))
}

/// What the outermost middleware needs to know (copied per request: keep it small).
#[derive(Clone, Copy)]
struct Edge {
    /// Whether to send HSTS.
    production: bool,
}

/// The outermost middleware, one layer for what every response gets: a request id (the
/// client's, when it is short and plain, else a new UUIDv7) stored for handlers and logs and
/// echoed on the response; the security headers; and the request counter and latency histogram.
///
/// One `from_fn` instead of a layer each: axum clones the layered service per request and each
/// `from_fn` boxes and clones what it wraps, which the `{ __typename }` profile showed as a
/// noticeable share of a small request's cost.
async fn edge(State(edge): State<Edge>, mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    let route = route_label(request.extensions().get::<axum::extract::MatchedPath>());
    let method = method_label(request.method());
    let header_value = HeaderValue::from_str(&id);
    request.extensions_mut().insert(RequestId(id));
    let started = std::time::Instant::now();
    let mut response = next.run(request).await;

    let headers = response.headers_mut();
    if let Ok(value) = header_value {
        headers.insert(REQUEST_ID.clone(), value);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // GraphiQL sends its own policy; every other response may not be framed.
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("frame-ancestors 'none'"),
        );
    }
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if edge.production {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains"),
        );
    }

    // Counted by route pattern (never the path, so ids cannot multiply the series), method and
    // status, through handles kept per thread (see `request_metrics`).
    let (requests, duration) = request_metrics(route, method, response.status());
    requests.increment(1);
    duration.record(started.elapsed().as_secs_f64());
    response
}

/// The request counter and latency histogram of a route, method and status. `metrics::counter!`
/// with labels builds its key (a vector of labels) and looks it up in the registry on every
/// call, which the `{ __typename }` profile showed at about 2.5% of a small request's cost; the
/// handles are looked up once per thread and label set instead. Bounded: routes and methods are
/// a few static labels, statuses at most a few hundred codes.
fn request_metrics(
    route: &'static str,
    method: &'static str,
    status: StatusCode,
) -> (metrics::Counter, metrics::Histogram) {
    type Key = (&'static str, &'static str, u16);
    thread_local! {
        static HANDLES: std::cell::RefCell<std::collections::HashMap<Key, (metrics::Counter, metrics::Histogram)>> =
            std::cell::RefCell::new(std::collections::HashMap::new());
    }
    HANDLES.with_borrow_mut(|handles| {
        handles
            .entry((route, method, status.as_u16()))
            .or_insert_with(|| {
                let status = status_label(status);
                (
                    metrics::counter!(names::HTTP_REQUESTS, "route" => route, "method" => method, "status" => status),
                    metrics::histogram!(names::HTTP_DURATION, "route" => route, "method" => method),
                )
            })
            .clone()
    })
}

/// The route label: the matched pattern of a known route.
fn route_label(matched: Option<&axum::extract::MatchedPath>) -> &'static str {
    match matched.map(axum::extract::MatchedPath::as_str) {
        Some("/graphql") => "/graphql",
        Some("/graphiql/{version}/{file}") => "/graphiql",
        Some("/healthz") => "/healthz",
        Some("/readyz") => "/readyz",
        Some("/metrics") => "/metrics",
        Some(_) => "other",
        None => "unmatched",
    }
}

/// The method label: the methods the routes serve, anything else as "other".
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::OPTIONS => "OPTIONS",
        Method::HEAD => "HEAD",
        _ => "other",
    }
}

/// The status label, e.g. "200".
fn status_label(status: StatusCode) -> metrics::SharedString {
    match status.as_u16() {
        200 => "200".into(),
        400 => "400".into(),
        401 => "401".into(),
        404 => "404".into(),
        405 => "405".into(),
        413 => "413".into(),
        429 => "429".into(),
        503 => "503".into(),
        other => other.to_string().into(),
    }
}

/// `GET /metrics`: Prometheus text format. With `AGENTRY_METRICS_TOKEN` set, only for
/// `Authorization: Bearer <token>`; in production only with a token (not served otherwise).
async fn metrics_endpoint(
    State(http): State<HttpState>,
    headers: axum::http::HeaderMap,
) -> Response {
    if http.app.config.is_production() && http.app.config.metrics_token.is_none() {
        return (
            StatusCode::NOT_FOUND,
            "metrics are served in production only with AGENTRY_METRICS_TOKEN set",
        )
            .into_response();
    }
    if let Some(expected) = &http.app.config.metrics_token {
        use secrecy::ExposeSecret;
        let presented = graphql::bearer_token(&headers).unwrap_or_default();
        // Constant-time comparison: the token guards operational data.
        let matches = presented.len() == expected.expose_secret().len()
            && presented
                .bytes()
                .zip(expected.expose_secret().bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !matches {
            return (
                StatusCode::UNAUTHORIZED,
                "metrics need `Authorization: Bearer <AGENTRY_METRICS_TOKEN>`",
            )
                .into_response();
        }
    }
    let Some(handle) = crate::telemetry::metrics() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed",
        )
            .into_response();
    };
    let pool = http.app.pool.status();
    metrics::gauge!(names::DB_POOL, "state" => "in_use").set((pool.size - pool.available) as f64);
    metrics::gauge!(names::DB_POOL, "state" => "idle").set(pool.available as f64);
    metrics::gauge!(names::DB_POOL, "state" => "max").set(pool.max_size as f64);
    handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        handle.render(),
    )
        .into_response()
}

/// CORS from `AGENTRY_CORS_ORIGINS`; with none configured, no cross-origin access at all.
fn cors(origins: &[String]) -> CorsLayer {
    let allowed: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(allowed))
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("apollo-require-preflight"),
            HeaderName::from_static("x-apollo-operation-name"),
            REQUEST_ID.clone(),
        ])
        .expose_headers([
            REQUEST_ID.clone(),
            header::RETRY_AFTER,
            HeaderName::from_static("ratelimit-limit"),
            HeaderName::from_static("ratelimit-remaining"),
            HeaderName::from_static("ratelimit-reset"),
        ])
        .max_age(Duration::from_secs(600))
}

/// `GET /healthz`: the process is alive. Never touches the database.
async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 when the database answers, 503 otherwise.
async fn readyz(State(http): State<HttpState>) -> Response {
    if http.app.shutting_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    if crate::db::ping(&http.app.pool).await {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unreachable").into_response()
    }
}

/// Serves on `listener` until `shutdown` resolves, then shuts down gracefully: readiness turns
/// 503, WebSockets get a 1001 close, runs executing here end with a terminal event, and after
/// `AGENTRY_SHUTDOWN_DRAIN_SECS` the listener closes while in-flight requests finish — all
/// bounded by `AGENTRY_SHUTDOWN_GRACE_SECS`.
pub async fn serve(
    app: AppState,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let pruner = app.limiters.spawn_pruner(LIMITER_PRUNE_PERIOD);
    let listener_task =
        crate::executions::hub::spawn_listener(app.hub.clone(), app.config.database_url.clone());
    let recovery = crate::executions::recovery::spawn(app.clone());
    let crew_recovery = crate::crews::runner::spawn_recovery(app.clone());
    let webhooks = crate::webhooks::dispatch::spawn(app.clone());
    let router = router(app.clone());
    let drain = Duration::from_secs(app.config.shutdown_drain_secs);
    let grace = Duration::from_secs(app.config.shutdown_grace_secs);
    let draining = app.clone();
    // TCP_NODELAY on every accepted socket: a WebSocket writes small frames whenever an event
    // arrives, and with Nagle's algorithm a frame written while the previous one is not yet
    // acknowledged waits for that acknowledgement, which a client that only listens may delay
    // by tens of milliseconds. Answers are written whole, so nothing is sent in smaller pieces.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY on an accepted socket");
        }
    });
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        draining.begin_shutdown();
        tokio::time::sleep(drain).await;
    });
    let mut stopping = app.shutdown.subscribe();
    let bounded = async {
        crate::state::until_set(&mut stopping).await;
        tokio::time::sleep(drain + grace).await;
    };
    let result = tokio::select! {
        result = server => result.map_err(anyhow::Error::from),
        () = bounded => {
            tracing::warn!("grace period over: exiting with requests still in flight");
            Ok(())
        }
    };
    // Sockets were told to close and runs to stop when shutdown began: wait for both, bounded.
    let settled = async {
        app.sockets.all_closed().await;
        while app.hub.running_here() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(grace, settled).await.is_err() {
        tracing::warn!(
            sockets = app.sockets.count(),
            runs = app.hub.running_here(),
            "grace period over before every socket closed and every run ended"
        );
    }
    pruner.abort();
    listener_task.abort();
    recovery.abort();
    crew_recovery.abort();
    webhooks.abort();
    result
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
