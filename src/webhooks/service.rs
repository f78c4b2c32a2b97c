//! Webhook rules: registering endpoints (URL rules, the egress policy, at most
//! [`MAX_WEBHOOKS_PER_USER`] each), their signing secrets (shown once, kept in the vault), the
//! events other domains queue ([`enqueue`], inside their own transactions), and test
//! deliveries. Sending is the dispatcher's (`dispatch`).

use base64::Engine;
use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use url::Url;
use uuid::Uuid;

use crate::{
    crypto::vault::{SecretSlot, Vault},
    db::schema::{webhook_deliveries, webhooks},
    error::{AppError, AppResult},
    request::Viewer,
    state::AppState,
    webhooks::model::{
        self, DeliveryRow, DeliveryStatus, MAX_WEBHOOKS_PER_USER, WebhookEvent, WebhookRow,
    },
};

/// Longest endpoint URL.
const MAX_URL_LEN: usize = 2048;
/// Longest description.
const MAX_DESCRIPTION_CHARS: usize = 500;

fn not_found() -> AppError {
    AppError::NotFound { what: "webhook" }
}

/// Where a webhook's secret lives in the vault.
fn slot(id: Uuid, user_id: Uuid) -> SecretSlot<'static> {
    SecretSlot {
        table: "webhooks",
        column: "secret_ciphertext",
        row_id: id,
        user_id,
    }
}

/// A new signing secret in the Standard Webhooks form: `whsec_` and 32 random bytes in base64.
fn new_secret() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    SecretString::from(format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

/// The `webhook-signature` header of a delivery (Standard Webhooks `v1`): HMAC-SHA256, keyed
/// with the secret's bytes, over `{id}.{timestamp}.{body}`, in base64.
pub fn sign(secret: &SecretString, id: &str, timestamp: i64, body: &str) -> anyhow::Result<String> {
    use hmac::{Hmac, Mac};
    let encoded = secret
        .expose_secret()
        .strip_prefix("whsec_")
        .ok_or_else(|| anyhow::anyhow!("a webhook secret without its whsec_ prefix"))?;
    let key = base64::engine::general_purpose::STANDARD.decode(encoded)?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key)?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    Ok(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// The webhook's signing secret, decrypted.
pub fn reveal(
    vault: &Vault,
    id: Uuid,
    user_id: Uuid,
    stored: &[u8],
) -> anyhow::Result<SecretString> {
    vault
        .decrypt(slot(id, user_id), stored)
        .map_err(|e| anyhow::anyhow!("cannot decrypt the secret of webhook {id}: {e}"))
}

/// Checks an endpoint URL: absolute http(s) without credentials, https outside development, and
/// a host the egress policy allows. BAD_USER_INPUT on `field`.
fn check_url(state: &AppState, field: &str, raw: &str) -> AppResult<String> {
    let raw = raw.trim();
    if raw.len() > MAX_URL_LEN {
        return Err(AppError::bad_input(
            field,
            format!("must be at most {MAX_URL_LEN} characters"),
        ));
    }
    let url = Url::parse(raw).map_err(|_| {
        AppError::bad_input(
            field,
            "must be an absolute URL like https://example.com/hooks",
        )
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(AppError::bad_input(
            field,
            "must not contain credentials: deliveries are signed instead",
        ));
    }
    match url.scheme() {
        "https" => {}
        "http" if !state.config.is_production() => {}
        "http" => {
            return Err(AppError::bad_input(
                field,
                "must use https (plain http is accepted in development only)",
            ));
        }
        _ => return Err(AppError::bad_input(field, "must be an https URL")),
    }
    if url.fragment().is_some() {
        return Err(AppError::bad_input(field, "must not have a fragment"));
    }
    // Deliveries go out under the tools' policy (public addresses only): none of the operator's
    // allowlist, which is meant for their own providers. Host names are checked when a delivery
    // connects (their addresses can change).
    state
        .tool_egress
        .check_url(url.as_str())
        .map_err(|refused| AppError::bad_input(field, refused))?;
    Ok(url.to_string())
}

/// Checks the events a webhook receives: at least one, none twice, not the test event.
fn check_events(field: &str, events: &[WebhookEvent]) -> AppResult<Vec<String>> {
    if events.is_empty() {
        return Err(AppError::bad_input(field, "must list at least one event"));
    }
    let mut names: Vec<String> = Vec::with_capacity(events.len());
    for event in events {
        if *event == WebhookEvent::WebhookTest {
            return Err(AppError::bad_input(
                field,
                "WEBHOOK_TEST is sent by testWebhook only, not subscribed to",
            ));
        }
        if names.iter().any(|n| n == event.as_str()) {
            return Err(AppError::bad_input(
                field,
                format!("lists {} twice", event.as_str()),
            ));
        }
        names.push(event.as_str().to_owned());
    }
    Ok(names)
}

fn check_description(field: &str, description: &str) -> AppResult<String> {
    let description = description.trim();
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(AppError::bad_input(
            field,
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    Ok(description.to_owned())
}

/// The viewer's webhooks, oldest first.
pub async fn list(state: &AppState, viewer: &Viewer) -> AppResult<Vec<WebhookRow>> {
    let mut conn = state.pool.get().await?;
    Ok(model::list_of(&mut conn, viewer.id()).await?)
}

/// One of the viewer's webhooks, or NOT_FOUND.
pub async fn get(state: &AppState, viewer: &Viewer, id: Uuid) -> AppResult<WebhookRow> {
    let mut conn = state.pool.get().await?;
    model::find_owned(&mut conn, viewer.id(), id)
        .await?
        .ok_or_else(not_found)
}

/// Registers an endpoint for `events`; returns it with its signing secret, shown this once.
pub async fn create(
    state: &AppState,
    viewer: &Viewer,
    url: &str,
    events: &[WebhookEvent],
    description: Option<&str>,
) -> AppResult<(WebhookRow, SecretString)> {
    let url = check_url(state, "input.url", url)?;
    let events = check_events("input.events", events)?;
    let description = check_description("input.description", description.unwrap_or(""))?;
    let user_id = viewer.id();
    let id = Uuid::now_v7();
    let secret = new_secret();
    let ciphertext = state
        .vault
        .encrypt(slot(id, user_id), &secret)
        .map_err(|e| AppError::Internal(anyhow::Error::new(e)))?;
    let mut conn = state.pool.get().await?;
    let row = diesel_async::AsyncConnection::transaction::<_, AppError, _>(
        &mut conn,
        async move |conn| {
            crate::executions::service::lock_user(conn, user_id).await?;
            let count: i64 = webhooks::table
                .filter(webhooks::user_id.eq(user_id))
                .count()
                .get_result(conn)
                .await?;
            if count >= MAX_WEBHOOKS_PER_USER as i64 {
                return Err(AppError::Conflict(format!(
                    "you have {count} webhooks, the most allowed: delete one first"
                )));
            }
            Ok(diesel::insert_into(webhooks::table)
                .values((
                    webhooks::id.eq(id),
                    webhooks::user_id.eq(user_id),
                    webhooks::url.eq(&url),
                    webhooks::description.eq(&description),
                    webhooks::events.eq(&events),
                    webhooks::secret_ciphertext.eq(&ciphertext),
                ))
                .returning(WebhookRow::as_returning())
                .get_result(conn)
                .await?)
        },
    )
    .await?;
    Ok((row, secret))
}

/// Changes what is given of a webhook's URL, events, description and active flag.
pub async fn update(
    state: &AppState,
    viewer: &Viewer,
    id: Uuid,
    url: Option<&str>,
    events: Option<&[WebhookEvent]>,
    description: Option<&str>,
    is_active: Option<bool>,
) -> AppResult<WebhookRow> {
    let url = url.map(|u| check_url(state, "input.url", u)).transpose()?;
    let events = events
        .map(|e| check_events("input.events", e))
        .transpose()?;
    let description = description
        .map(|d| check_description("input.description", d))
        .transpose()?;
    let changes = model::WebhookChanges {
        url,
        events,
        description,
        is_active,
    };
    let mut conn = state.pool.get().await?;
    if changes.url.is_none()
        && changes.events.is_none()
        && changes.description.is_none()
        && changes.is_active.is_none()
    {
        return model::find_owned(&mut conn, viewer.id(), id)
            .await?
            .ok_or_else(not_found);
    }
    // Only the fields given are written, so concurrent edits of different fields both hold.
    diesel::update(
        webhooks::table
            .find(id)
            .filter(webhooks::user_id.eq(viewer.id())),
    )
    .set((changes, webhooks::updated_at.eq(diesel::dsl::now)))
    .returning(WebhookRow::as_returning())
    .get_result(&mut conn)
    .await
    .optional()?
    .ok_or_else(not_found)
}

/// Deletes a webhook and its deliveries.
pub async fn delete(state: &AppState, viewer: &Viewer, id: Uuid) -> AppResult<bool> {
    let mut conn = state.pool.get().await?;
    let n = diesel::delete(
        webhooks::table
            .find(id)
            .filter(webhooks::user_id.eq(viewer.id())),
    )
    .execute(&mut conn)
    .await?;
    if n == 0 {
        return Err(not_found());
    }
    Ok(true)
}

/// Replaces a webhook's signing secret; returns the new one, shown this once. Deliveries not
/// yet sent are signed with the new secret.
pub async fn rotate_secret(
    state: &AppState,
    viewer: &Viewer,
    id: Uuid,
) -> AppResult<(WebhookRow, SecretString)> {
    let mut conn = state.pool.get().await?;
    let current = model::find_owned(&mut conn, viewer.id(), id)
        .await?
        .ok_or_else(not_found)?;
    let secret = new_secret();
    let ciphertext = state
        .vault
        .encrypt(slot(current.id, current.user_id), &secret)
        .map_err(|e| AppError::Internal(anyhow::Error::new(e)))?;
    let row = diesel::update(webhooks::table.find(current.id))
        .set((
            webhooks::secret_ciphertext.eq(&ciphertext),
            webhooks::updated_at.eq(diesel::dsl::now),
        ))
        .returning(WebhookRow::as_returning())
        .get_result(&mut conn)
        .await?;
    Ok((row, secret))
}

/// The body of a delivery: the Standard Webhooks shape `{type, timestamp, data}`.
fn payload(event: WebhookEvent, data: serde_json::Value) -> serde_json::Value {
    json!({
        "type": event.wire_type(),
        "timestamp": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data,
    })
}

/// Queues `event` with `data` for every active webhook of `user_id` that receives it, in the
/// caller's transaction (so it is sent exactly when the change commits). One statement.
pub async fn enqueue(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    event: WebhookEvent,
    data: serde_json::Value,
) -> diesel::QueryResult<usize> {
    model::enqueue(conn, user_id, event, &payload(event, data)).await
}

/// Queues a `webhook.test` delivery to one of the viewer's webhooks (active or not: it goes
/// out either way) and returns it.
pub async fn test(state: &AppState, viewer: &Viewer, id: Uuid) -> AppResult<DeliveryRow> {
    let mut conn = state.pool.get().await?;
    let webhook = model::find_owned(&mut conn, viewer.id(), id)
        .await?
        .ok_or_else(not_found)?;
    let event = WebhookEvent::WebhookTest;
    let body = payload(
        event,
        json!({ "webhookId": webhook.id, "message": "a test delivery from Agentry" }),
    );
    Ok(diesel::insert_into(webhook_deliveries::table)
        .values((
            webhook_deliveries::id.eq(Uuid::now_v7()),
            webhook_deliveries::webhook_id.eq(webhook.id),
            webhook_deliveries::user_id.eq(webhook.user_id),
            webhook_deliveries::event_type.eq(event.wire_type()),
            webhook_deliveries::payload.eq(&body),
        ))
        .returning(DeliveryRow::as_returning())
        .get_result(&mut conn)
        .await?)
}

/// A page of a webhook's deliveries (the viewer's webhook), newest first.
pub async fn deliveries(
    state: &AppState,
    viewer: &Viewer,
    webhook_id: Uuid,
    status: Option<DeliveryStatus>,
    before: Option<Uuid>,
    limit: i64,
) -> AppResult<Vec<DeliveryRow>> {
    let mut conn = state.pool.get().await?;
    model::find_owned(&mut conn, viewer.id(), webhook_id)
        .await?
        .ok_or_else(not_found)?;
    Ok(model::deliveries_page(&mut conn, webhook_id, status, before, limit).await?)
}

/// Re-encrypts every webhook secret under the active vault key (`rotate-encryption-key`).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification (and its reference libraries).
        let secret = SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned());
        let signature = sign(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(sign(&SecretString::from("nope".to_owned()), "a", 1, "b").is_err());
    }

    #[test]
    fn secrets_are_whsec_and_32_bytes_of_base64() {
        let secret = new_secret();
        let encoded = secret.expose_secret().strip_prefix("whsec_").unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(bytes.len(), 32);
        assert_ne!(new_secret().expose_secret(), secret.expose_secret());
    }
}
