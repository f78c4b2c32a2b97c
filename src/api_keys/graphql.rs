//! GraphQL types and resolvers for API keys. Thin: parse, authorize, call the service.

use async_graphql::{Context, Enum, ID, InputObject, Object, SimpleObject};
use chrono::{DateTime, Utc};
use secrecy::SecretString;

use crate::{
    api_keys::{
        model::ApiKeyRow,
        service::{self, KeyChanges, NewKey},
    },
    db::shared::{SharedRow, SharedRows},
    graphql::{guards::RoleGuard, loaders::Loaders, parse_id, request_context, state},
    llm::{ProviderKind, probe::ProbeResult},
};

/// Which API a key is for: a language model's (agents run on it) or a search API's (the
/// WEB_SEARCH tool uses it).
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum LlmProvider {
    /// OpenAI (`sk-…` keys).
    Openai,
    /// Anthropic (`sk-ant-…` keys).
    Anthropic,
    /// Hugging Face's OpenAI-compatible router (`hf_…` tokens).
    Huggingface,
    /// Any OpenAI-compatible server at `endpoint` (Ollama, vLLM, llama.cpp).
    Custom,
    /// Brave Search API (a search key for the WEB_SEARCH tool).
    Brave,
    /// Tavily Search API (`tvly-…`; a search key for the WEB_SEARCH tool).
    Tavily,
}

impl From<LlmProvider> for ProviderKind {
    fn from(p: LlmProvider) -> Self {
        match p {
            LlmProvider::Openai => Self::OpenAi,
            LlmProvider::Anthropic => Self::Anthropic,
            LlmProvider::Huggingface => Self::HuggingFace,
            LlmProvider::Custom => Self::Custom,
            LlmProvider::Brave => Self::Brave,
            LlmProvider::Tavily => Self::Tavily,
        }
    }
}

impl From<ProviderKind> for LlmProvider {
    fn from(p: ProviderKind) -> Self {
        match p {
            ProviderKind::OpenAi => Self::Openai,
            ProviderKind::Anthropic => Self::Anthropic,
            ProviderKind::HuggingFace => Self::Huggingface,
            ProviderKind::Custom => Self::Custom,
            ProviderKind::Brave => Self::Brave,
            ProviderKind::Tavily => Self::Tavily,
        }
    }
}

/// A stored provider key. The secret itself is never returned: only `maskedKey`. The row is
/// its own, or one of a list's shared answer (a page's agents share their keys' read).
pub struct ApiKey(pub SharedRow<ApiKeyRow>);

impl ApiKey {
    /// A key shown on its own.
    pub fn own(row: ApiKeyRow) -> Self {
        Self(row.into())
    }
}

#[Object]
impl ApiKey {
    /// Stable id.
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    /// Name, unique per user.
    async fn name(&self) -> &str {
        &self.0.name
    }

    /// Provider.
    async fn provider(&self) -> LlmProvider {
        ProviderKind::from_stored(&self.0.provider).map_or(LlmProvider::Custom, Into::into)
    }

    /// Base URL of a CUSTOM server (null for other providers).
    async fn endpoint(&self) -> Option<&str> {
        self.0.endpoint.as_deref()
    }

    /// The key's provider prefix and last four characters, e.g. `sk-…abcd`.
    async fn masked_key(&self) -> &str {
        &self.0.masked_key
    }

    /// Inactive keys cannot run agents.
    async fn is_active(&self) -> bool {
        self.0.is_active
    }

    /// When a run last used the key.
    async fn last_used_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_used_at
    }

    /// When `testApiKey` last ran.
    async fn last_tested_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_tested_at
    }

    /// Whether the last test succeeded (null if never tested).
    async fn last_test_ok(&self) -> Option<bool> {
        self.0.last_test_ok
    }

    /// What the last test found.
    async fn last_test_message(&self) -> Option<&str> {
        self.0.last_test_message.as_deref()
    }

    /// Runs on this key, tokens and cost, optionally between `since` (inclusive) and `until`
    /// (exclusive), by the time each run was accepted (`Execution.createdAt`), as `me.usage`
    /// counts them.
    async fn usage(
        &self,
        ctx: &Context<'_>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> async_graphql::Result<ApiKeyUsage> {
        let row = ctx
            .data::<Loaders>()?
            .usage
            .load_one((self.0.id, since, until))
            .await?
            .unwrap_or_default();
        Ok(ApiKeyUsage {
            executions: row.executions,
            input_tokens: row.input_tokens,
            output_tokens: row.output_tokens,
            cost_usd: row.cost_micros as f64 / 1_000_000.0,
        })
    }

    /// Creation time.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    /// Last change.
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
}

/// What a key has been used for.
#[derive(SimpleObject)]
pub struct ApiKeyUsage {
    /// Number of runs.
    pub executions: i64,
    /// Prompt tokens.
    pub input_tokens: i64,
    /// Completion tokens.
    pub output_tokens: i64,
    /// Cost in USD (summed exactly in micro-dollars).
    pub cost_usd: f64,
}

/// The outcome of `testApiKey`: a real call to the provider.
#[derive(SimpleObject)]
pub struct ApiKeyTestResult {
    /// Whether the provider accepted the key.
    pub ok: bool,
    /// Round-trip time in milliseconds.
    pub latency_ms: i64,
    /// What happened, in words (never contains the key).
    pub message: String,
    /// Models the key can use.
    pub models: Vec<String>,
    /// The key, with `lastTestedAt` updated.
    pub api_key: ApiKey,
}

/// Input of `createApiKey`.
#[derive(InputObject)]
pub struct CreateApiKeyInput {
    /// Name (1–100 characters, unique among your keys).
    pub name: String,
    /// Provider.
    pub provider: LlmProvider,
    /// The key: OpenAI `sk-…`, Anthropic `sk-ant-…`, Hugging Face `hf_…`, CUSTOM anything.
    pub secret: String,
    /// CUSTOM only: base URL of the OpenAI-compatible server, e.g. `http://localhost:11434/v1`.
    pub endpoint: Option<String>,
}

/// Input of `updateApiKey`; omitted fields stay as they are.
#[derive(InputObject)]
pub struct UpdateApiKeyInput {
    /// New name.
    pub name: Option<String>,
    /// New endpoint (CUSTOM only).
    pub endpoint: Option<String>,
    /// Replacement secret, e.g. after rotating the key at the provider.
    pub secret: Option<String>,
}

/// API key queries.
#[derive(Default)]
pub struct ApiKeysQuery;

#[Object]
impl ApiKeysQuery {
    /// Your API keys, newest first.
    #[graphql(guard = "RoleGuard::USER")]
    async fn api_keys(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ApiKey>> {
        let viewer = request_context(ctx)?.viewer()?;
        let rows = service::list(state(ctx)?, viewer.id()).await?;
        Ok(SharedRows::from(rows).iter().map(ApiKey).collect())
    }

    /// One of your API keys; null if it does not exist or is not yours.
    #[graphql(guard = "RoleGuard::USER")]
    async fn api_key(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<ApiKey>> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        match service::get(state(ctx)?, viewer, id).await {
            Ok(row) => Ok(Some(ApiKey::own(row))),
            Err(crate::error::AppError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// API key mutations.
#[derive(Default)]
pub struct ApiKeysMutation;

#[Object]
impl ApiKeysMutation {
    /// Stores a provider key, encrypted. Only its masked form is ever shown again.
    #[graphql(guard = "RoleGuard::USER")]
    async fn create_api_key(
        &self,
        ctx: &Context<'_>,
        input: CreateApiKeyInput,
    ) -> async_graphql::Result<ApiKey> {
        let viewer = request_context(ctx)?.viewer()?;
        let new = NewKey {
            name: input.name,
            provider: input.provider.into(),
            secret: SecretString::from(input.secret),
            endpoint: input.endpoint,
        };
        Ok(ApiKey::own(
            service::create(state(ctx)?, viewer, new).await?,
        ))
    }

    /// Renames a key, moves a CUSTOM key's endpoint, or replaces its secret.
    #[graphql(guard = "RoleGuard::USER")]
    async fn update_api_key(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateApiKeyInput,
    ) -> async_graphql::Result<ApiKey> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        let changes = KeyChanges {
            name: input.name,
            endpoint: input.endpoint,
            secret: input.secret.map(SecretString::from),
        };
        Ok(ApiKey::own(
            service::update(state(ctx)?, viewer, id, changes).await?,
        ))
    }

    /// Turns a key on or off; inactive keys cannot run agents.
    #[graphql(guard = "RoleGuard::USER")]
    async fn set_api_key_active(
        &self,
        ctx: &Context<'_>,
        id: ID,
        active: bool,
    ) -> async_graphql::Result<ApiKey> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        Ok(ApiKey::own(
            service::set_active(state(ctx)?, viewer, id, active).await?,
        ))
    }

    /// Deletes a key.
    #[graphql(guard = "RoleGuard::USER")]
    async fn delete_api_key(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        Ok(service::delete(state(ctx)?, viewer, id).await?)
    }

    /// Makes a real, cheap call to the provider with the key (lists its models) and records
    /// the outcome. A rejected key or an unreachable provider is `ok: false`, not an error.
    #[graphql(guard = "RoleGuard::USER")]
    async fn test_api_key(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<ApiKeyTestResult> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        let (
            row,
            ProbeResult {
                ok,
                latency_ms,
                message,
                models,
                ..
            },
        ) = service::test(state(ctx)?, viewer, id).await?;
        Ok(ApiKeyTestResult {
            ok,
            latency_ms,
            message,
            models,
            api_key: ApiKey::own(row),
        })
    }
}
