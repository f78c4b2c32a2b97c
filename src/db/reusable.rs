//! Raw SQL statements the connection prepares once and reuses.
//!
//! diesel never caches a `sql_query` or a statement built around `dsl::sql` (their text could
//! be anything), so each one costs PostgreSQL a parse and a plan, and diesel-async an extra
//! round trip to prepare it, on every call. For the few fixed statements on hot paths (the runs of a page of agents or crews, a
//! run's event appends, NOTIFY, a run start's lock) that is most of their cost: the lateral
//! read of a page of agents' runs spent as long being planned as being executed.
//!
//! It overrides `QueryFragment::is_safe_to_cache_prepared`, which diesel-async consults on the
//! outer query; should a diesel or diesel-async upgrade stop doing so, the statements would
//! silently go back to one-shot, and the test
//! `a_page_of_runs_is_read_by_a_statement_prepared_once_per_connection` fails.

use diesel::{
    QueryResult,
    pg::Pg,
    query_builder::{AstPass, Query, QueryFragment, QueryId},
};

/// A raw SQL statement (`diesel::sql_query` with its binds, or a `select` of `dsl::sql`) that
/// may be prepared once per connection and reused, keyed by its text. Only for statements whose text is one of a few
/// constants, never built from input: each distinct text is kept prepared on every pooled
/// connection. Such a statement names its columns rather than selecting `*`: a prepared `*`
/// fails once its table gains a column (another instance migrating first).
#[derive(Debug, Clone)]
pub struct Reusable<Q>(pub Q);

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Reusable<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    /// The whole point: the text is fixed, so caching it is bounded.
    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}

/// No static id: the cache is keyed by the statement's text and bind types, as each wrapped
/// query's text differs. (Every `Reusable` shares the id type `()`: a static id would make
/// different statements share one cache entry, hence the assertion below.)
impl<Q> QueryId for Reusable<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

const _: () = assert!(!<Reusable<diesel::query_builder::SqlQuery> as QueryId>::HAS_STATIC_QUERY_ID);

impl<Q: Query> Query for Reusable<Q> {
    type SqlType = Q::SqlType;
}
