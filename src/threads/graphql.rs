//! GraphQL for threads: list (newest activity first), read, start, rename, delete; a thread's
//! runs. A run joins a thread through `executeAgent(threadId:)`.

use async_graphql::{
    Context, ID, Object,
    connection::{Connection, Edge},
};
use base64::Engine;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    agents::graphql::Agent,
    error::AppError,
    executions::{
        graphql::{Execution, executions_page, run_columns, runs_connection},
        model::RunFilter,
    },
    graphql::{
        eager::Eager,
        guards::RoleGuard,
        loaders::Loaders,
        pagination::{Page, PageOf},
        parse_id, request_context, state,
    },
    threads::{model::ThreadRow, service},
};

/// A conversation with one of your agents: each run in it sees the earlier ones.
pub struct Thread(pub ThreadRow);

#[Object]
impl Thread {
    /// Stable id.
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// Title: the one given, or the beginning of the first message.
    async fn title(&self) -> &str {
        &self.0.title
    }
    /// The agent the conversation is with.
    async fn agent(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Agent>> {
        Agent::by_id(ctx, self.0.agent_id).await
    }
    /// When it was started.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// When its last run started.
    async fn last_activity_at(&self) -> DateTime<Utc> {
        self.0.last_activity_at
    }
    /// Its runs, newest first.
    #[graphql(complexity = "first.unwrap_or(20).max(0) as usize * child_complexity")]
    async fn executions(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<PageOf<Eager<Execution>>> {
        let page = Page::of(ctx, first, after)?;
        if page.after.is_none() {
            // The first page (a list of threads with their latest runs) is batched.
            let rows = ctx
                .data::<Loaders>()?
                .thread_executions
                .load_one((self.0.id, page.fetch_limit(), run_columns(ctx, true)))
                .await?
                .unwrap_or_default();
            return Ok(runs_connection(&page, rows));
        }
        let viewer = request_context(ctx)?.viewer()?;
        let of = RunFilter {
            thread_id: Some(self.0.id),
            ..RunFilter::default()
        };
        executions_page(state(ctx)?, viewer, of, page).await
    }
}

/// A thread's place in the list: its activity time and id.
fn encode_cursor(row: &ThreadRow) -> String {
    let mut bytes = row.id.as_bytes().to_vec();
    bytes.extend_from_slice(&row.last_activity_at.timestamp_micros().to_be_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, Uuid), AppError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .filter(|b| b.len() == 24)
        .and_then(|b| {
            let id = Uuid::from_slice(&b[..16]).ok()?;
            let micros = i64::from_be_bytes(b[16..].try_into().ok()?);
            Some((DateTime::from_timestamp_micros(micros)?, id))
        })
        .ok_or_else(|| AppError::bad_input("after", "is not a cursor returned by this list"))
}

/// Thread queries.
#[derive(Default)]
pub struct ThreadsQuery;

#[Object]
impl ThreadsQuery {
    /// Your threads, the most recently active first; `agentId` keeps one agent's.
    #[graphql(
        guard = "RoleGuard::USER",
        complexity = "first.unwrap_or(20).max(0) as usize * child_complexity"
    )]
    async fn threads(
        &self,
        ctx: &Context<'_>,
        agent_id: Option<ID>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<PageOf<Thread, String>> {
        let viewer = request_context(ctx)?.viewer()?;
        let agent_id = agent_id.map(|a| parse_id("agentId", &a)).transpose()?;
        let page = Page::of(ctx, first, None)?;
        let cursor = after.as_deref().map(decode_cursor).transpose()?;
        let mut rows =
            service::page(state(ctx)?, viewer, agent_id, cursor, page.fetch_limit()).await?;
        let has_next = rows.len() > page.first;
        rows.truncate(page.first);
        let mut connection = Connection::new(cursor.is_some(), has_next);
        connection.edges = rows
            .into_iter()
            .map(|row| Edge::new(encode_cursor(&row), Thread(row)))
            .collect();
        Ok(Eager(connection))
    }

    /// One of your threads; null if it does not exist or is not yours.
    #[graphql(guard = "RoleGuard::USER")]
    async fn thread(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Thread>> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        match service::get(state(ctx)?, viewer, id).await {
            Ok(row) => Ok(Some(Thread(row))),
            Err(AppError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Thread mutations.
#[derive(Default)]
pub struct ThreadsMutation;

#[Object]
impl ThreadsMutation {
    /// Starts a conversation with one of your agents; send its messages with
    /// `executeAgent(agentId:, input:, threadId:)`. Without `title`, the first message names it.
    #[graphql(guard = "RoleGuard::USER")]
    async fn create_thread(
        &self,
        ctx: &Context<'_>,
        agent_id: ID,
        title: Option<String>,
    ) -> async_graphql::Result<Thread> {
        let viewer = request_context(ctx)?.viewer()?;
        let agent_id = parse_id("agentId", &agent_id)?;
        let row = service::create(state(ctx)?, viewer, agent_id, title.as_deref()).await?;
        Ok(Thread(row))
    }

    /// Renames one of your threads (1–200 characters).
    #[graphql(guard = "RoleGuard::USER")]
    async fn rename_thread(
        &self,
        ctx: &Context<'_>,
        id: ID,
        title: String,
    ) -> async_graphql::Result<Thread> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        Ok(Thread(
            service::rename(state(ctx)?, viewer, id, &title).await?,
        ))
    }

    /// Deletes one of your threads; its runs stay in your history, no longer in a thread.
    /// CONFLICT while one of its runs is in progress.
    #[graphql(guard = "RoleGuard::USER")]
    async fn delete_thread(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        Ok(service::delete(state(ctx)?, viewer, id).await?)
    }
}
