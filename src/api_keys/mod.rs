//! Users' LLM provider keys: encrypted vault entries, live key tests, usage.

pub mod graphql;
pub mod model;
pub mod service;
pub mod validate;
