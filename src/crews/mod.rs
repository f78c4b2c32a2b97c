//! Crews: a named set of a user's agents working through an ordered list of tasks, CrewAI
//! style. SEQUENTIAL crews run the tasks in order, each output passed on; HIERARCHICAL crews
//! run a manager agent that delegates to the members through a `delegate_task` tool. Built-in
//! `templates` make ready-made agents and crews in one step. Every
//! step is an ordinary run (`executions`), linked to its crew run; `runner` coordinates a crew
//! run, `live` streams one over a single subscription.

pub mod graphql;
pub mod live;
pub mod model;
pub mod runner;
pub mod service;
pub mod templates;
