//! Usage reports: a user's runs, tokens and exact cost over a period, grouped by day, agent,
//! model, provider or key, summed in SQL (`User.usage`).

pub mod graphql;
pub mod model;
pub mod service;
