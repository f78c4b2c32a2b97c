//! Accounts, sessions, roles, admin actions and the audit log.

pub mod admin;
pub mod audit;
pub mod graphql;
pub mod model;
pub mod service;
pub mod session_cache;
pub mod sessions;
pub mod validate;
