//! The file workspace: files users upload (GraphQL multipart requests) and files their runs
//! write (the FILES tool), stored in PostgreSQL (so backups carry them), bounded per file and
//! per user, typed by their content.

pub mod content;
pub mod graphql;
pub mod model;
pub mod service;
