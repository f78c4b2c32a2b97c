//! The one integration-test binary: a module per area of the product, sharing the fixtures in
//! `common` (a server on port 0, a database per test, clients and fake providers).
//! Run one area with `cargo test --test it <area>::`, e.g. `cargo test --test it executions::`.

mod common;

mod admin;
mod agents;
mod api_keys;
mod auth;
mod bootstrap;
mod budgets;
mod conformance;
mod crews;
mod executions;
mod fake_provider;
mod files;
mod js_client;
mod llm;
mod oauth;
mod operations;
mod packaging;
mod rate_limit;
mod streams;
mod threads;
mod tools;
mod traces;
mod transport;
mod usage;
mod webhooks;
mod websocket;
