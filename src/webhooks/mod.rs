//! Webhooks: users register HTTPS endpoints for events of their account (runs ending, a key
//! rejected by its provider, budgets at 80% and 100%). Events are queued in PostgreSQL in the
//! transaction of the change they report (`service::enqueue`); `dispatch` sends them signed the
//! Standard Webhooks way, through the egress policy, retrying with backoff, surviving restarts.

pub mod dispatch;
pub mod graphql;
pub mod model;
pub mod service;
