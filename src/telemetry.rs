//! Logging: readable lines in development, JSON in production. Secrets never reach a log line:
//! they are `secrecy` types (redacted `Debug`) and no handler logs request bodies.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(filter: &str, json: bool) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
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
