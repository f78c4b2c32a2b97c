//! Agent definitions: role, goal, backstory, model, key, tools, configuration.

pub mod graphql;
pub mod model;
pub mod service;
