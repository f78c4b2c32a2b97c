//! Automatic persisted queries, as Apollo Client's `createPersistedQueryLink` speaks them: a
//! request may carry `extensions.persistedQuery = { version: 1, sha256Hash }` instead of its
//! `query`. An unknown hash is answered with `PERSISTED_QUERY_NOT_FOUND`; the client then sends
//! the query with its hash once, and the hash works from then on (POST and GET).
//!
//! This is done in the HTTP layer rather than with async-graphql's `ApolloPersistedQueries`
//! extension on purpose: resolving the hash to the query *text* before anything executes keeps
//! every check that looks at the document — the 405 for a mutation sent with GET, the parse
//! hook that counts aliases and sets error codes — working for persisted queries too (the
//! extension hands the executor a pre-parsed document that skips the parse hook).

use std::{num::NonZeroUsize, sync::Arc};

use async_graphql::Request;
use sha2::{Digest, Sha256};

use crate::error::ErrorCode;

/// How many distinct persisted queries are remembered (least recently used are dropped).
pub const CAPACITY: usize = 1024;
/// The longest query text that is remembered: with `CAPACITY` this bounds the store at
/// 16 MiB however many anonymous clients register queries. A longer query still runs when
/// sent in full; it is just not stored, so its hash alone keeps answering not-found.
pub const MAX_QUERY_BYTES: usize = 16 * 1024;

/// `extensions.code` (and message) Apollo Client waits for before it resends the full query.
pub const NOT_FOUND_CODE: &str = ErrorCode::PersistedQueryNotFound.as_str();
/// The message Apollo's link also recognises.
pub const NOT_FOUND_MESSAGE: &str = "PersistedQueryNotFound";

/// A bounded, shared map from a query's SHA-256 (lower-case hex) to its text.
#[derive(Clone)]
pub struct PersistedQueries(Arc<std::sync::Mutex<lru::LruCache<String, String>>>);

/// Why a persisted query could not be resolved: an error code and a message for the client.
#[derive(Debug, PartialEq, Eq)]
pub struct PersistedQueryError {
    /// `extensions.code` of the error.
    pub code: &'static str,
    /// The error's message.
    pub message: String,
}

impl PersistedQueries {
    /// An empty store holding at most `capacity` queries (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self(Arc::new(std::sync::Mutex::new(lru::LruCache::new(
            capacity,
        ))))
    }

    /// Replaces a hash-only request's query with the stored text, or stores the text a request
    /// sends with its hash (after checking the hash). Requests without `persistedQuery` pass
    /// through unchanged.
    pub fn resolve(&self, mut request: Request) -> Result<Request, PersistedQueryError> {
        let Some(value) = request.extensions.remove("persistedQuery") else {
            return Ok(request);
        };
        let bad = |message: &str| PersistedQueryError {
            code: ErrorCode::BadUserInput.as_str(),
            message: message.to_owned(),
        };
        let value = value
            .into_json()
            .map_err(|_| bad("`extensions.persistedQuery` is not valid JSON"))?;
        let version = value.get("version").and_then(serde_json::Value::as_i64);
        if version != Some(1) {
            return Err(PersistedQueryError {
                code: ErrorCode::PersistedQueryNotSupported.as_str(),
                message: "only `extensions.persistedQuery.version` 1 is supported".into(),
            });
        }
        let hash = value
            .get("sha256Hash")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| bad("`extensions.persistedQuery.sha256Hash` must be a string"))?
            .to_ascii_lowercase();
        let mut cache = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if request.query.is_empty() {
            let query = cache.get(&hash).cloned().ok_or(PersistedQueryError {
                code: NOT_FOUND_CODE,
                message: NOT_FOUND_MESSAGE.into(),
            })?;
            request.query = query;
        } else {
            let actual = format!("{:x}", Sha256::digest(request.query.as_bytes()));
            if actual != hash {
                return Err(bad(
                    "provided sha does not match query: `extensions.persistedQuery.sha256Hash` must be the SHA-256 of `query`",
                ));
            }
            if request.query.len() <= MAX_QUERY_BYTES {
                cache.put(hash, request.query.clone());
            }
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_hash(query: &str, hash: &str) -> Request {
        let mut request = Request::new(query);
        request.extensions.insert(
            "persistedQuery".into(),
            async_graphql::Value::from_json(
                serde_json::json!({ "version": 1, "sha256Hash": hash }),
            )
            .expect("json"),
        );
        request
    }

    #[test]
    fn an_unknown_hash_is_not_found_then_registered_then_resolved() {
        let store = PersistedQueries::new(4);
        let query = "{ __typename }";
        let hash = format!("{:x}", Sha256::digest(query.as_bytes()));
        let err = store.resolve(with_hash("", &hash)).expect_err("unknown");
        assert_eq!(err.code, NOT_FOUND_CODE);
        assert_eq!(
            store
                .resolve(with_hash(query, &hash))
                .expect("registered")
                .query,
            query
        );
        assert_eq!(
            store.resolve(with_hash("", &hash)).expect("resolved").query,
            query
        );
    }

    #[test]
    fn a_query_past_the_size_bound_runs_but_is_not_stored() {
        let store = PersistedQueries::new(4);
        let query = format!("{{ __typename }}{}", " ".repeat(MAX_QUERY_BYTES));
        let hash = format!("{:x}", Sha256::digest(query.as_bytes()));
        assert_eq!(
            store.resolve(with_hash(&query, &hash)).expect("runs").query,
            query
        );
        let err = store.resolve(with_hash("", &hash)).expect_err("not stored");
        assert_eq!(err.code, NOT_FOUND_CODE);
    }

    #[test]
    fn a_hash_that_does_not_match_its_query_is_refused() {
        let store = PersistedQueries::new(4);
        let err = store
            .resolve(with_hash("{ __typename }", &"0".repeat(64)))
            .expect_err("mismatch");
        assert_eq!(err.code, "BAD_USER_INPUT");
    }
}
