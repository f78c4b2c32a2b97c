//! OAuth sign-in and linked accounts: provider registry, code flow with PKCE + state, linked
//! accounts whose tokens live in the vault.

pub mod accounts;
pub mod graphql;
pub mod id_token;
pub mod model;
pub mod providers;
pub mod service;
