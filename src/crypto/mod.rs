//! Cryptography: password hashing and checking, access and refresh tokens, secrets at rest.

pub mod password;
pub mod tokens;
pub mod vault;
