//! Runs: the runner, the event log, the live hub (fan-out across processes), cancellation and
//! recovery.

pub mod graphql;
pub mod hub;
pub mod live;
pub mod model;
pub mod recovery;
pub mod runner;
pub mod service;
