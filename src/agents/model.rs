//! Rows of `agents` and the queries on them, always scoped by owner.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::agents;

/// A row of `agents`.
#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = agents, check_for_backend(diesel::pg::Pg))]
pub struct AgentRow {
    /// Primary key (UUIDv7).
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// The key runs use.
    pub api_key_id: Uuid,
    /// Name, unique per user.
    pub name: String,
    /// Free description.
    pub description: String,
    /// Who the agent is (system prompt).
    pub role: String,
    /// What it tries to achieve (system prompt).
    pub goal: String,
    /// Its background (system prompt).
    pub backstory: String,
    /// Model name at the provider.
    pub model: String,
    /// Sampling temperature (0–2), provider default when null.
    pub temperature: Option<f64>,
    /// Output token cap, provider default when null.
    pub max_output_tokens: Option<i32>,
    /// Tool names.
    pub tools: Vec<Option<String>>,
    /// Free JSON configuration.
    pub config: serde_json::Value,
    /// Inactive agents cannot run.
    pub is_active: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// The columns an insert or a full update writes.
#[derive(Debug, Insertable, AsChangeset)]
#[diesel(table_name = agents)]
pub struct AgentValues {
    /// The key runs use.
    pub api_key_id: Uuid,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Role.
    pub role: String,
    /// Goal.
    pub goal: String,
    /// Backstory.
    pub backstory: String,
    /// Model.
    pub model: String,
    /// Temperature.
    #[diesel(treat_none_as_null = true)]
    pub temperature: Option<f64>,
    /// Output token cap.
    #[diesel(treat_none_as_null = true)]
    pub max_output_tokens: Option<i32>,
    /// Tools.
    pub tools: Vec<Option<String>>,
    /// Configuration.
    pub config: serde_json::Value,
}

crate::owned_queries!(agents, AgentRow, named, activatable);

/// A page of a user's agents, newest first, after the cursor id `before`.
pub async fn page_owned(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    active: Option<bool>,
    before: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<AgentRow>> {
    let mut query = agents::table
        .filter(agents::user_id.eq(user_id))
        .order(agents::id.desc())
        .limit(limit)
        .select(AgentRow::as_select())
        .into_boxed();
    if let Some(active) = active {
        query = query.filter(agents::is_active.eq(active));
    }
    if let Some(before) = before {
        query = query.filter(agents::id.lt(before));
    }
    query.load(conn).await
}

/// Names of the agents that use an API key.
pub async fn names_using_key(
    conn: &mut AsyncPgConnection,
    api_key_id: Uuid,
) -> QueryResult<Vec<String>> {
    agents::table
        .filter(agents::api_key_id.eq(api_key_id))
        .order(agents::name.asc())
        .select(agents::name)
        .load(conn)
        .await
}

/// Agents by id (any owner: callers have already scoped the ids), for the DataLoader.
pub async fn by_ids(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<AgentRow>> {
    agents::table
        .filter(agents::id.eq_any(ids))
        .select(AgentRow::as_select())
        .load(conn)
        .await
}
