//! Relay connections: opaque cursors over UUIDv7 ids (time-ordered, so pages stay stable while
//! rows are inserted) and the `first` / `after` rules shared by every list.

use async_graphql::{
    Context, OutputType,
    connection::{Connection, CursorType, Edge},
};
use base64::Engine;
use uuid::Uuid;

use crate::{
    error::{AppError, AppResult},
    graphql::{eager::Eager, selection::shows},
};

/// A page of a list: a Relay connection (`edges`, `nodes`, `pageInfo`) over opaque cursors,
/// resolved eagerly (a page of agents holds a connection of runs per agent: async-graphql's
/// own resolution of a connection was about 5% of such a page's CPU; see [`Eager`]).
pub type PageOf<N, C = IdCursor> = Eager<Connection<C, N>>;

/// The cursor of a row: its id, written out (opaque to clients) only when a client asks for
/// it (`edges { cursor }`, `pageInfo`): a page of 50 agents with 5 runs each encoded 300
/// cursors that a query of `nodes` never showed.
#[derive(Debug, Clone, Copy)]
pub struct IdCursor(pub Uuid);

impl CursorType for IdCursor {
    type Error = &'static str;

    fn decode_cursor(cursor: &str) -> Result<Self, Self::Error> {
        decode_cursor(cursor)
            .map(Self)
            .map_err(|_| "is not a cursor returned by this list")
    }

    fn encode_cursor(&self) -> String {
        encode_cursor(self.0)
    }
}

/// Page size when `first` is not given.
pub const DEFAULT_PAGE_SIZE: usize = 20;
/// Largest page a client may ask for.
pub const MAX_PAGE_SIZE: usize = 100;

/// A validated page request.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// How many rows to return.
    pub first: usize,
    /// Return rows after this id (in the list's order).
    pub after: Option<Uuid>,
    /// Whether to read one row past the page, to learn whether another page follows.
    peek: bool,
}

impl Page {
    /// Checks `first` (1–100) and decodes `after`; reads the row past the page. (Resolvers
    /// use [`Page::of`], which knows whether that row is wanted.)
    fn new(first: Option<i32>, after: Option<String>) -> AppResult<Self> {
        let first = match first {
            None => DEFAULT_PAGE_SIZE,
            Some(n) if n >= 1 && n as usize <= MAX_PAGE_SIZE => n as usize,
            Some(n) => {
                return Err(AppError::bad_input(
                    "first",
                    format!("must be between 1 and {MAX_PAGE_SIZE} (got {n})"),
                ));
            }
        };
        let after = after.map(|c| decode_cursor(&c)).transpose()?;
        Ok(Self {
            first,
            after,
            peek: true,
        })
    }

    /// Checks `first` (1–100) and decodes `after`, for the connection field `ctx` resolves:
    /// the row past the page is read only when the field's selection shows
    /// `pageInfo { hasNextPage }` (fragments and aliases count), the one thing it tells. A page
    /// of 50 agents that shows each one's newest 5 runs' `nodes` read 300 runs to show 250.
    pub fn of(ctx: &Context<'_>, first: Option<i32>, after: Option<String>) -> AppResult<Self> {
        let mut page = Self::new(first, after)?;
        page.peek = shows(ctx, &["pageInfo"], &["hasNextPage"]);
        Ok(page)
    }

    /// Rows to fetch: the page, and one more when whether another page follows is asked.
    pub fn fetch_limit(&self) -> i64 {
        self.first as i64 + i64::from(self.peek)
    }

    /// Turns fetched rows (at most `fetch_limit`) into a connection.
    pub fn connection<T, N: OutputType>(
        &self,
        mut rows: Vec<T>,
        id: impl Fn(&T) -> Uuid,
        node: impl Fn(T) -> N,
    ) -> PageOf<N> {
        let has_next = rows.len() > self.first;
        rows.truncate(self.first);
        let mut connection = Connection::new(self.after.is_some(), has_next);
        connection.edges = rows
            .into_iter()
            .map(|row| Edge::new(IdCursor(id(&row)), node(row)))
            .collect();
        Eager(connection)
    }
}

/// The cursor of a row: opaque to clients, an id to us.
pub fn encode_cursor(id: Uuid) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.as_bytes())
}

fn decode_cursor(cursor: &str) -> AppResult<Uuid> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        .ok_or_else(|| AppError::bad_input("after", "is not a cursor returned by this list"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_reads_one_row_past_itself_unless_told_not_to() {
        let page = Page::new(Some(5), None).unwrap();
        assert_eq!(page.fetch_limit(), 6);
        let unpeeked = Page {
            peek: false,
            ..page
        };
        assert_eq!(unpeeked.fetch_limit(), 5);
        // Without the extra row, a full page says no page follows (the field is not shown).
        let connection = unpeeked.connection(
            (0..5).map(|_| Uuid::now_v7()).collect(),
            |id| *id,
            |id| id.to_string(),
        );
        assert!(!connection.0.has_next_page);
        let connection = page.connection(
            (0..6).map(|_| Uuid::now_v7()).collect(),
            |id| *id,
            |id| id.to_string(),
        );
        assert!(connection.0.has_next_page);
        assert_eq!(connection.0.edges.len(), 5);
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_are_named() {
        let id = Uuid::now_v7();
        let page = Page::new(Some(5), Some(encode_cursor(id))).unwrap();
        assert_eq!(page.after, Some(id));
        assert!(
            matches!(Page::new(None, Some("nope".into())), Err(AppError::BadInput { field, .. }) if field == "after")
        );
        assert!(
            matches!(Page::new(Some(0), None), Err(AppError::BadInput { field, .. }) if field == "first")
        );
        assert!(
            matches!(Page::new(Some(101), None), Err(AppError::BadInput { field, .. }) if field == "first")
        );
    }
}
