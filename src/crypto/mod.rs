//! Cryptography: password hashing and checking, access and refresh tokens.

pub mod password;
pub mod tokens;
