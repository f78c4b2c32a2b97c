//! DataLoaders: relations are loaded in one statement per batch, so the number of SQL
//! statements per request does not grow with the length of a list. The batch reads themselves
//! are the domains' service functions; a loader only adapts them to async-graphql. A fresh
//! set is attached to every request (and WebSocket connection), so caches never outlive it.

use std::collections::HashMap;

use async_graphql::dataloader::{DataLoader, HashMapCache, Loader};
use uuid::Uuid;

use crate::{
    agents::{model::AgentRow, service as agents},
    api_keys::{model::ApiKeyRow, service as api_keys},
    crews::{model::CrewRunRow, service as crews},
    db::Pool,
    db::shared::SharedRows,
    error::AppError,
    executions::{
        model::{ExecutionRow, RecentOf, UsageRow},
        service::{self as executions, RecentKey, UsageKey},
    },
    state::AppState,
};

/// Every loader of one request (cheap to clone: the loaders are shared). The set is built on
/// first use: most requests (`{ __typename }`, `me`, mutations) load no relation, and building
/// seven loaders for each showed in the W1 profile.
#[derive(Clone)]
pub struct Loaders(std::sync::Arc<Lazy>);

/// What a set is built from, and the set once built.
struct Lazy {
    pool: Pool,
    delay: std::time::Duration,
    set: std::sync::OnceLock<LoaderSet>,
}

impl std::ops::Deref for Loaders {
    type Target = LoaderSet;
    fn deref(&self) -> &LoaderSet {
        let lazy = &self.0;
        lazy.set
            .get_or_init(|| LoaderSet::new(lazy.pool.clone(), lazy.delay))
    }
}

/// The loaders themselves.
pub struct LoaderSet {
    /// API keys by id.
    pub api_keys: DataLoader<ApiKeyLoader>,
    /// Agents by id (cached per request; lists feed it what they loaded).
    pub agents: DataLoader<AgentLoader, HashMapCache>,
    /// The newest N runs of each agent, keyed by (agent id, N, which columns).
    pub recent_executions: DataLoader<RecentExecutionsLoader>,
    /// The newest N runs of each thread, keyed by (thread id, N, which columns).
    pub thread_executions: DataLoader<RecentExecutionsLoader>,
    /// The runs of each crew run, newest first, keyed by (crew run id, N, which columns).
    pub crew_run_executions: DataLoader<RecentExecutionsLoader>,
    /// The newest N runs of each crew, keyed by (crew id, N).
    pub crew_runs: DataLoader<CrewRunsLoader>,
    /// Key usage, keyed by (key id, since, until).
    pub usage: DataLoader<UsageLoader>,
}

impl Loaders {
    /// A fresh set for one request (built when first used).
    pub fn new(state: &AppState) -> Self {
        Self(std::sync::Arc::new(Lazy {
            pool: state.pool.clone(),
            delay: std::time::Duration::from_millis(state.config.dataloader_delay_ms),
            set: std::sync::OnceLock::new(),
        }))
    }
}

impl LoaderSet {
    fn new(pool: Pool, delay: std::time::Duration) -> Self {
        Self {
            api_keys: DataLoader::new(ApiKeyLoader(pool.clone()), tokio::spawn).delay(delay),
            agents: DataLoader::with_cache(
                AgentLoader(pool.clone()),
                tokio::spawn,
                HashMapCache::default(),
            )
            .delay(delay),
            recent_executions: DataLoader::new(
                RecentExecutionsLoader(pool.clone(), RecentOf::Agent),
                tokio::spawn,
            )
            .delay(delay),
            thread_executions: DataLoader::new(
                RecentExecutionsLoader(pool.clone(), RecentOf::Thread),
                tokio::spawn,
            )
            .delay(delay),
            crew_run_executions: DataLoader::new(
                RecentExecutionsLoader(pool.clone(), RecentOf::CrewRun),
                tokio::spawn,
            )
            .delay(delay),
            crew_runs: DataLoader::new(CrewRunsLoader(pool.clone()), tokio::spawn).delay(delay),
            usage: DataLoader::new(UsageLoader(pool), tokio::spawn).delay(delay),
        }
    }
}

/// A loader error (cloned to every field waiting on the batch).
type LoadError = async_graphql::Error;

fn load_error(e: AppError) -> LoadError {
    e.into()
}

/// Loads API keys by id.
pub struct ApiKeyLoader(Pool);

impl Loader<Uuid> for ApiKeyLoader {
    type Value = ApiKeyRow;
    type Error = LoadError;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, ApiKeyRow>, LoadError> {
        let rows = api_keys::by_ids(&self.0, keys).await.map_err(load_error)?;
        Ok(rows.into_iter().map(|row| (row.id, row)).collect())
    }
}

/// Loads agents by id.
pub struct AgentLoader(Pool);

impl Loader<Uuid> for AgentLoader {
    type Value = AgentRow;
    type Error = LoadError;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, AgentRow>, LoadError> {
        let rows = agents::by_ids(&self.0, keys).await.map_err(load_error)?;
        Ok(rows.into_iter().map(|row| (row.id, row)).collect())
    }
}

/// Loads the newest runs of many agents (threads, crew runs) at once, keyed by (parent id, how
/// many, with their text or not).
pub struct RecentExecutionsLoader(Pool, RecentOf);

impl Loader<RecentKey> for RecentExecutionsLoader {
    type Value = SharedRows<ExecutionRow>;
    type Error = LoadError;

    async fn load(
        &self,
        keys: &[RecentKey],
    ) -> Result<HashMap<RecentKey, SharedRows<ExecutionRow>>, LoadError> {
        executions::recent_runs(&self.0, self.1, keys)
            .await
            .map_err(load_error)
    }
}

/// Loads the newest runs of many crews at once, keyed by (crew id, how many).
pub struct CrewRunsLoader(Pool);

impl Loader<(Uuid, i64)> for CrewRunsLoader {
    type Value = Vec<CrewRunRow>;
    type Error = LoadError;

    async fn load(
        &self,
        keys: &[(Uuid, i64)],
    ) -> Result<HashMap<(Uuid, i64), Vec<CrewRunRow>>, LoadError> {
        crews::recent_runs(&self.0, keys).await.map_err(load_error)
    }
}

/// Sums the runs of many keys at once, each over its period.
pub struct UsageLoader(Pool);

impl Loader<UsageKey> for UsageLoader {
    type Value = UsageRow;
    type Error = LoadError;

    async fn load(&self, keys: &[UsageKey]) -> Result<HashMap<UsageKey, UsageRow>, LoadError> {
        executions::usage_by_keys(&self.0, keys)
            .await
            .map_err(load_error)
    }
}
