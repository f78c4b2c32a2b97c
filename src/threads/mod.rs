//! Conversation threads: a user's multi-turn conversation with one agent. Each run in a thread
//! sees the thread's earlier runs — inputs, answers, tool calls and results — trimmed to fit
//! the model's context window, oldest turns first (`history`). Two runs cannot interleave in
//! one thread.

pub mod graphql;
pub mod history;
pub mod model;
pub mod service;
