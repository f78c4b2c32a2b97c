//! Budgets: monthly spend limits (exact money) and per-run token caps on the account, one API
//! key or one agent, and the ceilings admins set for users. `service` holds the rules and the
//! [`service::Allowance`] the runner meters a run against; `model` keeps each budget's spend
//! counter for the month, charged when a run ends.

pub mod graphql;
pub mod model;
pub mod service;
