//! Key vault rules: create, update (rename, move, replace the secret), activate, delete, test,
//! and re-encrypt everything under a new vault key.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use crate::{
    api_keys::{
        model::{self, ApiKeyRow, NewApiKey},
        validate,
    },
    crypto::vault::{SecretSlot, Vault},
    db::{Pool, schema::api_keys},
    error::{AppError, AppResult, unique_or},
    llm::{ProviderKind, probe},
    request::Viewer,
    state::AppState,
};

/// Most keys one user may keep.
pub const MAX_KEYS_PER_USER: i64 = 50;

/// What `createApiKey` needs.
pub struct NewKey {
    /// Display name.
    pub name: String,
    /// Provider.
    pub provider: ProviderKind,
    /// The secret, in clear (only until it is encrypted).
    pub secret: SecretString,
    /// CUSTOM endpoint.
    pub endpoint: Option<String>,
}

/// What `updateApiKey` may change; `None` keeps the current value.
pub struct KeyChanges {
    /// New name.
    pub name: Option<String>,
    /// New CUSTOM endpoint.
    pub endpoint: Option<String>,
    /// Replacement secret (rotation at the provider).
    pub secret: Option<SecretString>,
}

/// The vault slot of a key's secret.
fn slot(id: Uuid, user_id: Uuid) -> SecretSlot<'static> {
    SecretSlot {
        table: "api_keys",
        column: "secret_ciphertext",
        row_id: id,
        user_id,
    }
}

fn provider_of(row: &ApiKeyRow) -> AppResult<ProviderKind> {
    ProviderKind::from_stored(&row.provider)
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("unknown provider {}", row.provider)))
}

fn not_found() -> AppError {
    AppError::NotFound { what: "API key" }
}

fn duplicate_name() -> AppError {
    AppError::Conflict("you already have a key with this name".into())
}

/// Stores a new key, encrypted.
pub async fn create(state: &AppState, viewer: &Viewer, input: NewKey) -> AppResult<ApiKeyRow> {
    let name = validate::name("input.name", &input.name)?;
    let secret = validate::secret("input.secret", input.provider, input.secret.expose_secret())?;
    let endpoint = validate::endpoint(
        "input.endpoint",
        input.provider,
        input.endpoint.as_deref(),
        state.config.is_production(),
    )?;
    let mut conn = state.pool.get().await?;
    if model::name_taken(&mut conn, viewer.id(), &name, None).await? {
        return Err(duplicate_name());
    }
    if model::count_owned(&mut conn, viewer.id()).await? >= MAX_KEYS_PER_USER {
        return Err(AppError::Conflict(format!(
            "you already have {MAX_KEYS_PER_USER} keys: delete one first"
        )));
    }
    let id = Uuid::now_v7();
    let secret = SecretString::from(secret);
    let ciphertext = state
        .vault
        .encrypt(slot(id, viewer.id()), &secret)
        .map_err(anyhow::Error::new)?;
    let masked = validate::mask(input.provider, secret.expose_secret());
    let row = diesel::insert_into(api_keys::table)
        .values(NewApiKey {
            id,
            user_id: viewer.id(),
            name: &name,
            provider: input.provider.as_str(),
            endpoint: endpoint.as_deref(),
            secret_ciphertext: &ciphertext,
            masked_key: &masked,
        })
        .returning(ApiKeyRow::as_returning())
        .get_result(&mut conn)
        .await
        .map_err(unique_or(duplicate_name))?;
    tracing::info!(user.id = %viewer.id(), api_key.id = %row.id, provider = %row.provider, "API key created");
    Ok(row)
}

/// The viewer's key, or `NOT_FOUND` (also for another user's key).
pub async fn get(state: &AppState, viewer: &Viewer, id: Uuid) -> AppResult<ApiKeyRow> {
    let mut conn = state.pool.get().await?;
    model::find_owned(&mut conn, viewer.id(), id)
        .await?
        .ok_or_else(not_found)
}

/// The viewer's keys, newest first.
pub async fn list(state: &AppState, user_id: Uuid) -> AppResult<Vec<ApiKeyRow>> {
    let mut conn = state.pool.get().await?;
    Ok(model::list_owned(&mut conn, user_id).await?)
}

/// Renames, moves (CUSTOM endpoint) or replaces the secret of a key.
pub async fn update(
    state: &AppState,
    viewer: &Viewer,
    id: Uuid,
    changes: KeyChanges,
) -> AppResult<ApiKeyRow> {
    let mut conn = state.pool.get().await?;
    let current = model::find_owned(&mut conn, viewer.id(), id)
        .await?
        .ok_or_else(not_found)?;
    let provider = provider_of(&current)?;
    let name = changes
        .name
        .as_deref()
        .map(|n| validate::name("input.name", n))
        .transpose()?;
    let endpoint = match changes.endpoint.as_deref() {
        Some(raw) => validate::endpoint(
            "input.endpoint",
            provider,
            Some(raw),
            state.config.is_production(),
        )?,
        None => current.endpoint.clone(),
    };
    let secret = changes
        .secret
        .as_ref()
        .map(|s| {
            validate::secret("input.secret", provider, s.expose_secret()).map(SecretString::from)
        })
        .transpose()?;
    // A stored secret never follows its key to a new host: whoever moves the endpoint must
    // know the secret (else a stolen session could send it anywhere with `testApiKey`).
    if endpoint != current.endpoint && secret.is_none() {
        return Err(AppError::bad_input(
            "input.secret",
            "is required when the endpoint changes: enter the key's secret again",
        ));
    }
    if let Some(name) = &name
        && model::name_taken(&mut conn, viewer.id(), name, Some(id)).await?
    {
        return Err(duplicate_name());
    }
    let (ciphertext, masked) = match &secret {
        Some(secret) => (
            state
                .vault
                .encrypt(slot(id, viewer.id()), secret)
                .map_err(anyhow::Error::new)?,
            validate::mask(provider, secret.expose_secret()),
        ),
        None => (
            current.secret_ciphertext.clone(),
            current.masked_key.clone(),
        ),
    };
    let row = diesel::update(api_keys::table.find(id))
        .filter(api_keys::user_id.eq(viewer.id()))
        .set((
            api_keys::name.eq(name.as_deref().unwrap_or(&current.name)),
            api_keys::endpoint.eq(endpoint.as_deref()),
            api_keys::secret_ciphertext.eq(&ciphertext),
            api_keys::masked_key.eq(&masked),
            api_keys::updated_at.eq(diesel::dsl::now),
        ))
        .returning(ApiKeyRow::as_returning())
        .get_result(&mut conn)
        .await
        .map_err(unique_or(duplicate_name))?;
    if secret.is_some() {
        tracing::info!(user.id = %viewer.id(), api_key.id = %id, "API key secret replaced");
    }
    Ok(row)
}

/// Turns a key on or off (inactive keys cannot run agents).
pub async fn set_active(
    state: &AppState,
    viewer: &Viewer,
    id: Uuid,
    active: bool,
) -> AppResult<ApiKeyRow> {
    let mut conn = state.pool.get().await?;
    model::set_active_owned(&mut conn, viewer.id(), id, active)
        .await?
        .ok_or_else(not_found)
}

/// Deletes a key; refused while agents use it (the error names them).
pub async fn delete(state: &AppState, viewer: &Viewer, id: Uuid) -> AppResult<bool> {
    let mut conn = state.pool.get().await?;
    model::find_owned(&mut conn, viewer.id(), id)
        .await?
        .ok_or_else(not_found)?;
    let users = crate::agents::model::names_using_key(&mut conn, id).await?;
    if !users.is_empty() {
        return Err(AppError::Conflict(format!(
            "the key is used by agent(s) {}: give them another key or delete them first",
            users.join(", ")
        )));
    }
    let deleted = diesel::delete(api_keys::table.find(id))
        .filter(api_keys::user_id.eq(viewer.id()))
        .execute(&mut conn)
        .await?;
    if deleted == 0 {
        return Err(not_found());
    }
    tracing::info!(user.id = %viewer.id(), api_key.id = %id, "API key deleted");
    Ok(true)
}

/// Decrypts a key's secret (for a provider call). Never log or return the result.
pub fn reveal(vault: &Vault, row: &ApiKeyRow) -> AppResult<SecretString> {
    vault
        .decrypt(slot(row.id, row.user_id), &row.secret_ciphertext)
        .map_err(|e| {
            AppError::Internal(
                anyhow::Error::new(e).context(format!("cannot decrypt API key {}", row.id)),
            )
        })
}

/// Whether the user holds an active BRAVE or TAVILY key (nothing decrypted).
pub async fn has_search_key(state: &AppState, user_id: Uuid) -> AppResult<bool> {
    let mut conn = state.pool.get().await?;
    let providers = [ProviderKind::Brave.as_str(), ProviderKind::Tavily.as_str()];
    Ok(model::newest_active_of(&mut conn, user_id, &providers)
        .await?
        .is_some())
}

/// The user's search key for the WEB_SEARCH tool: their newest active BRAVE or TAVILY key,
/// revealed.
pub async fn search_key(
    state: &AppState,
    user_id: Uuid,
) -> AppResult<Option<(ProviderKind, SecretString)>> {
    let mut conn = state.pool.get().await?;
    let providers = [ProviderKind::Brave.as_str(), ProviderKind::Tavily.as_str()];
    let Some(row) = model::newest_active_of(&mut conn, user_id, &providers).await? else {
        return Ok(None);
    };
    Ok(Some((provider_of(&row)?, reveal(&state.vault, &row)?)))
}

/// Calls the provider with the key, records when and how it went, and returns the outcome.
pub async fn test(
    state: &AppState,
    viewer: &Viewer,
    id: Uuid,
) -> AppResult<(ApiKeyRow, probe::ProbeResult)> {
    let row = get(state, viewer, id).await?;
    let provider = provider_of(&row)?;
    let secret = reveal(&state.vault, &row)?;
    let base = provider.base_url(&state.config, row.endpoint.as_deref());
    let result = match state.egress.check_url(base) {
        Ok(()) => {
            probe::list_models(
                &state.http,
                provider,
                base,
                &secret,
                Duration::from_secs(state.config.provider_timeout_secs),
            )
            .await
        }
        Err(refused) => probe::ProbeResult {
            ok: false,
            latency_ms: 0,
            message: refused,
            models: Vec::new(),
            rejected: false,
        },
    };
    let mut conn = state.pool.get().await?;
    let user_id = viewer.id();
    let rejected = result.rejected.then(|| {
        serde_json::json!({
            "apiKeyId": id,
            "provider": row.provider,
            "executionId": null,
            "error": result.message,
        })
    });
    let (ok, message) = (result.ok, result.message.clone());
    let row = diesel_async::AsyncConnection::transaction::<_, AppError, _>(
        &mut conn,
        async move |conn| {
            let row = diesel::update(api_keys::table.find(id))
                .filter(api_keys::user_id.eq(user_id))
                .set((
                    api_keys::last_tested_at.eq(diesel::dsl::now),
                    api_keys::last_test_ok.eq(ok),
                    api_keys::last_test_message.eq(&message),
                ))
                .returning(ApiKeyRow::as_returning())
                .get_result(conn)
                .await
                .optional()?
                .ok_or_else(not_found)?;
            if let Some(data) = rejected {
                let event = crate::webhooks::model::WebhookEvent::ApiKeyRejected;
                crate::webhooks::service::enqueue(conn, user_id, event, data).await?;
            }
            Ok(row)
        },
    )
    .await?;
    tracing::info!(user.id = %viewer.id(), api_key.id = %id, ok = result.ok, latency_ms = result.latency_ms, "API key tested");
    Ok((row, result))
}

/// Re-encrypts every stored key secret that is not under the active vault key, in batches.
/// Safe to interrupt and re-run: each row is swapped only if unchanged since it was read, and
/// rows already under the active key are skipped. Returns how many rows were rewrapped.
pub async fn rewrap_all(
    conn: &mut AsyncPgConnection,
    vault: &Vault,
    batch: i64,
) -> anyhow::Result<u64> {
    crate::crypto::vault::rewrap_column(
        conn,
        vault,
        batch,
        async |conn, after, n| model::page_all(conn, after, n).await,
        slot,
        async |conn, id, old, new| model::swap_ciphertext(conn, id, old, new).await,
    )
    .await
}

/// Keys by id, for the request's DataLoader. No owner filter: the ids come from rows the viewer
/// was already allowed to read (an agent's key), never from a client.
pub async fn by_ids(pool: &Pool, ids: &[Uuid]) -> AppResult<Vec<ApiKeyRow>> {
    let mut conn = pool.get().await?;
    Ok(model::find_many(&mut conn, ids).await?)
}
