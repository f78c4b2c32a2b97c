//! Logging: readable lines in development, JSON in production. Secrets never reach a log line:
//! they are `secrecy` types (redacted `Debug`) and no handler logs request bodies.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(filter: &str, json: bool) {
    init_with(filter, json, false, None);
}

/// Error reporting to Sentry, on only when `SENTRY_DSN` is set. Keep the guard alive until the
/// process ends: dropping it flushes pending events.
pub fn sentry(
    dsn: Option<&secrecy::SecretString>,
    environment: &'static str,
) -> Option<sentry::ClientInitGuard> {
    use secrecy::ExposeSecret;
    let dsn = dsn
        .map(|d| d.expose_secret().trim().to_owned())
        .filter(|d| !d.is_empty())?;
    let guard = sentry::init((
        dsn,
        sentry::ClientOptions {
            release: sentry::release_name!(),
            environment: Some(environment.into()),
            // Never attach request bodies, headers or user data: they may hold secrets.
            send_default_pii: false,
            ..Default::default()
        },
    ));
    guard.is_enabled().then_some(guard)
}

/// Installs the global subscriber, with the Sentry layer when `with_sentry` (error events
/// become Sentry events, lower levels breadcrumbs) and, given a tracer
/// provider ([`otel`]), the OpenTelemetry layer: every span (requests, GraphQL operations, SQL
/// statements, provider calls, runs) is exported to the OTLP endpoint.
pub fn init_with(
    filter: &str,
    json: bool,
    with_sentry: bool,
    otel: Option<&opentelemetry_sdk::trace::SdkTracerProvider>,
) {
    use opentelemetry::trace::TracerProvider;
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let sentry_layer = with_sentry.then(sentry::integrations::tracing::layer);
    let otel_layer = otel.map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("agentry"))
            .with_tracked_inactivity(false)
    });
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(sentry_layer)
        .with(otel_layer);
    let result = if json {
        registry
            .with(fmt::layer().json().with_current_span(true))
            .try_init()
    } else {
        let ansi = std::io::stdout().is_terminal();
        registry
            .with(fmt::layer().compact().with_ansi(ansi))
            .try_init()
    };
    // Already installed (tests start many servers in one process): keep the first one.
    let _ = result;
}

/// The OpenTelemetry tracer provider when `OTEL_EXPORTER_OTLP_ENDPOINT` is set: spans are
/// batched and sent over OTLP/HTTP (`OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf` or
/// `http/json`) to `<endpoint>/v1/traces`, named `OTEL_SERVICE_NAME`. Shut it down before the
/// process exits (flushes what is pending). Also installs the W3C `traceparent` propagator, so
/// a request that carries one joins the caller's trace.
pub fn otel(
    config: &crate::config::Config,
) -> anyhow::Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let Some(endpoint) = config.otel_endpoint.as_deref() else {
        return Ok(None);
    };
    let protocol = match config.otel_protocol.as_str() {
        "http/json" => Protocol::HttpJson,
        _ => Protocol::HttpBinary,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()
        .map_err(|e| {
            anyhow::anyhow!(
                "OTEL_EXPORTER_OTLP_ENDPOINT `{endpoint}` is not usable ({e}): give an http(s) URL \
                 like http://otel-collector:4318"
            )
        })?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(config.otel_service_name.clone())
        .build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    Ok(Some(provider))
}

/// The W3C trace id of `span` as 32 hex digits, when OpenTelemetry export is on (else `None`).
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// Makes `span` a child of the trace named by the request's `traceparent` header (W3C Trace
/// Context), when there is one and OpenTelemetry export is on.
pub fn join_remote_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    struct Headers<'a>(&'a http::HeaderMap);
    impl opentelemetry::propagation::Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }
    if !headers.contains_key("traceparent") {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&Headers(headers))
    });
    let _ = span.set_parent(parent);
}

/// The Prometheus recorder of this process (installed once; every server in the process shares
/// it). `None` if another recorder was installed first.
pub fn metrics() -> Option<&'static metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = metrics_exporter_prometheus::PrometheusBuilder::new();
            // Latency buckets from 1 ms to 60 s (requests, provider first bytes).
            let builder = builder
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0,
                ])
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

/// Metric names, in one place.
pub mod names {
    /// Counter: HTTP requests by route, method and status.
    pub const HTTP_REQUESTS: &str = "agentry_http_requests_total";
    /// Histogram: HTTP request latency by route and method.
    pub const HTTP_DURATION: &str = "agentry_http_request_duration_seconds";
    /// Counter: GraphQL operations by name, type and outcome.
    pub const GRAPHQL_OPERATIONS: &str = "agentry_graphql_operations_total";
    /// Gauge: open WebSocket connections.
    pub const WS_CONNECTIONS: &str = "agentry_websocket_connections";
    /// Gauge: operations open on WebSockets (subscriptions, and queries while they run).
    pub const SUBSCRIPTIONS: &str = "agentry_graphql_active_subscriptions";
    /// Counter: rate-limit rejections by limiter.
    pub const RATE_LIMITED: &str = "agentry_rate_limit_rejections_total";
    /// Gauge: database pool connections by state.
    pub const DB_POOL: &str = "agentry_db_pool_connections";
    /// Counter: runs ended, by status and provider.
    pub const RUNS: &str = "agentry_executions_total";
    /// Histogram: time until a provider stream opened, by provider.
    pub const PROVIDER_LATENCY: &str = "agentry_provider_first_byte_seconds";
    /// Counter: tokens by provider and direction (input, output).
    pub const TOKENS: &str = "agentry_llm_tokens_total";
    /// Counter: waits for a busy or unavailable database by long-lived work (streams, runners).
    pub const DB_WAITS: &str = "agentry_db_waits_total";
    /// Counter: WebSocket connections closed by a bound (slow reader, idle, limits), by reason.
    pub const WS_CLOSED_BY_LIMIT: &str = "agentry_websocket_limit_closes_total";
    /// Counter: `executionEvents` subscriptions served by the WebSocket transport's shared lane
    /// (each event serialized once for all its subscribers) rather than by async-graphql.
    pub const WS_SHARED_SUBSCRIPTIONS: &str = "agentry_websocket_shared_subscriptions_total";
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        names::HTTP_REQUESTS,
        "HTTP requests by route, method and status"
    );
    describe_histogram!(
        names::HTTP_DURATION,
        metrics::Unit::Seconds,
        "HTTP request latency"
    );
    describe_counter!(
        names::GRAPHQL_OPERATIONS,
        "GraphQL operations by name, type and outcome"
    );
    describe_gauge!(names::WS_CONNECTIONS, "Open WebSocket connections");
    describe_gauge!(names::SUBSCRIPTIONS, "Active GraphQL subscriptions");
    describe_counter!(names::RATE_LIMITED, "Requests refused by a rate limit");
    describe_gauge!(names::DB_POOL, "Database pool connections by state");
    describe_counter!(names::RUNS, "Agent runs ended, by status and provider");
    describe_histogram!(
        names::PROVIDER_LATENCY,
        metrics::Unit::Seconds,
        "Time until a provider stream opened"
    );
    describe_counter!(names::TOKENS, "LLM tokens by provider and direction");
    describe_counter!(
        names::DB_WAITS,
        "Waits of streams and runners for a busy or unavailable database"
    );
    describe_counter!(
        names::WS_CLOSED_BY_LIMIT,
        "WebSocket connections closed by a bound, by reason"
    );
    describe_counter!(
        names::WS_SHARED_SUBSCRIPTIONS,
        "executionEvents subscriptions served by the WebSocket transport's shared lane"
    );
}
