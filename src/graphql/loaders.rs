//! DataLoaders: relations are loaded in one statement per batch, so the number of SQL
//! statements per request does not grow with the length of a list. A fresh set is attached to
//! every request (and WebSocket connection), so caches never outlive it.

use std::collections::HashMap;

use async_graphql::dataloader::{DataLoader, HashMapCache, Loader};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    agents::model::{self as agents, AgentRow},
    api_keys::model::ApiKeyRow,
    db::Pool,
    error::AppError,
    executions::model::{self as executions, ExecutionRow, UsageRow},
    state::AppState,
};

/// Every loader of one request (cheap to clone: the loaders are shared).
#[derive(Clone)]
pub struct Loaders(std::sync::Arc<LoaderSet>);

impl std::ops::Deref for Loaders {
    type Target = LoaderSet;
    fn deref(&self) -> &LoaderSet {
        &self.0
    }
}

/// The loaders themselves.
pub struct LoaderSet {
    /// API keys by id.
    pub api_keys: DataLoader<ApiKeyLoader>,
    /// Agents by id (cached per request; lists feed it what they loaded).
    pub agents: DataLoader<AgentLoader, HashMapCache>,
    /// The newest N runs of each agent, keyed by (agent id, N).
    pub recent_executions: DataLoader<RecentExecutionsLoader>,
    /// Key usage, keyed by (key id, since, until).
    pub usage: DataLoader<UsageLoader>,
}

impl Loaders {
    /// A fresh set for one request.
    pub fn new(state: &AppState) -> Self {
        let pool = state.pool.clone();
        let delay = std::time::Duration::from_millis(state.config.dataloader_delay_ms);
        Self(std::sync::Arc::new(LoaderSet {
            api_keys: DataLoader::new(ApiKeyLoader(pool.clone()), tokio::spawn).delay(delay),
            agents: DataLoader::with_cache(
                AgentLoader(pool.clone()),
                tokio::spawn,
                HashMapCache::default(),
            )
            .delay(delay),
            recent_executions: DataLoader::new(RecentExecutionsLoader(pool.clone()), tokio::spawn)
                .delay(delay),
            usage: DataLoader::new(UsageLoader(pool), tokio::spawn).delay(delay),
        }))
    }
}

/// A loader error (cloned to every field waiting on the batch).
type LoadError = async_graphql::Error;

fn load_error(e: impl Into<AppError>) -> LoadError {
    e.into().into()
}

/// Loads API keys by id.
pub struct ApiKeyLoader(Pool);

impl Loader<Uuid> for ApiKeyLoader {
    type Value = ApiKeyRow;
    type Error = LoadError;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, ApiKeyRow>, LoadError> {
        let mut conn = self.0.get().await.map_err(load_error)?;
        let rows = crate::api_keys::model::find_many(&mut conn, keys)
            .await
            .map_err(load_error)?;
        Ok(rows.into_iter().map(|row| (row.id, row)).collect())
    }
}

/// Loads agents by id.
pub struct AgentLoader(Pool);

impl Loader<Uuid> for AgentLoader {
    type Value = AgentRow;
    type Error = LoadError;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, AgentRow>, LoadError> {
        let mut conn = self.0.get().await.map_err(load_error)?;
        let rows = agents::by_ids(&mut conn, keys).await.map_err(load_error)?;
        Ok(rows.into_iter().map(|row| (row.id, row)).collect())
    }
}

/// Loads the newest runs of many agents at once.
pub struct RecentExecutionsLoader(Pool);

impl Loader<(Uuid, i64)> for RecentExecutionsLoader {
    type Value = Vec<ExecutionRow>;
    type Error = LoadError;

    async fn load(
        &self,
        keys: &[(Uuid, i64)],
    ) -> Result<HashMap<(Uuid, i64), Vec<ExecutionRow>>, LoadError> {
        let mut conn = self.0.get().await.map_err(load_error)?;
        let mut out: HashMap<(Uuid, i64), Vec<ExecutionRow>> = HashMap::new();
        // Usually one page size for the whole batch: one statement per distinct size.
        let mut by_limit: HashMap<i64, Vec<Uuid>> = HashMap::new();
        for (agent, limit) in keys {
            by_limit.entry(*limit).or_default().push(*agent);
        }
        for (limit, agent_ids) in by_limit {
            let rows = executions::recent_by_agents(&mut conn, &agent_ids, limit)
                .await
                .map_err(load_error)?;
            for agent in &agent_ids {
                out.insert((*agent, limit), Vec::new());
            }
            for row in rows {
                out.entry((row.agent_id, limit)).or_default().push(row);
            }
        }
        Ok(out)
    }
}

/// A half-open period `[since, until)`, either end open when `None`.
pub type Period = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// Key of a usage lookup: the key and the half-open period.
pub type UsageKey = (Uuid, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// Sums the runs of many keys at once.
pub struct UsageLoader(Pool);

impl Loader<UsageKey> for UsageLoader {
    type Value = UsageRow;
    type Error = LoadError;

    async fn load(&self, keys: &[UsageKey]) -> Result<HashMap<UsageKey, UsageRow>, LoadError> {
        let mut conn = self.0.get().await.map_err(load_error)?;
        let mut by_period: HashMap<Period, Vec<Uuid>> = HashMap::new();
        for (key, since, until) in keys {
            by_period.entry((*since, *until)).or_default().push(*key);
        }
        let mut out = HashMap::new();
        for ((since, until), ids) in by_period {
            let rows = executions::usage_by_keys(&mut conn, &ids, since, until)
                .await
                .map_err(load_error)?;
            for id in &ids {
                out.insert(
                    (*id, since, until),
                    UsageRow {
                        api_key_id: *id,
                        ..UsageRow::default()
                    },
                );
            }
            for row in rows {
                out.insert((row.api_key_id, since, until), row);
            }
        }
        Ok(out)
    }
}
