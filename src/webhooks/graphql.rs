//! GraphQL for webhooks: register, change, delete, rotate the secret, send a test; read
//! endpoints and their deliveries with every attempt.

use async_graphql::{Context, ID, InputObject, Json, Object, SimpleObject};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;

use crate::{
    graphql::{
        guards::RoleGuard,
        pagination::{Page, PageOf},
        parse_id, request_context, state,
    },
    webhooks::{
        model::{DeliveryRow, DeliveryStatus, WebhookEvent, WebhookRow},
        service,
    },
};

/// An HTTPS endpoint that receives signed deliveries of your account's events (Standard
/// Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature` headers).
pub struct Webhook(pub WebhookRow);

#[Object]
impl Webhook {
    /// Stable id.
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// Where deliveries are POSTed.
    async fn url(&self) -> &str {
        &self.0.url
    }
    /// Your note.
    async fn description(&self) -> &str {
        &self.0.description
    }
    /// The events it receives.
    async fn events(&self) -> Vec<WebhookEvent> {
        self.0
            .events
            .iter()
            .filter_map(|e| WebhookEvent::from_name(e))
            .collect()
    }
    /// Whether deliveries are made (an inactive webhook queues nothing).
    async fn is_active(&self) -> bool {
        self.0.is_active
    }
    /// When it was registered.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// When it last changed.
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
    /// Its deliveries, newest first, optionally only those in `status`.
    #[graphql(complexity = "first.unwrap_or(20).max(0) as usize * child_complexity")]
    async fn deliveries(
        &self,
        ctx: &Context<'_>,
        status: Option<DeliveryStatus>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<PageOf<WebhookDelivery>> {
        let viewer = request_context(ctx)?.viewer()?;
        let page = Page::of(ctx, first, after)?;
        let rows = service::deliveries(
            state(ctx)?,
            viewer,
            self.0.id,
            status,
            page.after,
            page.fetch_limit(),
        )
        .await?;
        Ok(page.connection(rows, |d| d.id, WebhookDelivery))
    }
}

/// One event's delivery to one webhook, with every attempt made.
pub struct WebhookDelivery(pub DeliveryRow);

/// One attempt at a delivery.
#[derive(SimpleObject)]
pub struct WebhookAttempt {
    /// When it was made.
    pub at: Option<DateTime<Utc>>,
    /// The endpoint's HTTP status (null when it did not answer).
    pub status_code: Option<i32>,
    /// Why it failed (null when it succeeded).
    pub error: Option<String>,
    /// How long it took, in milliseconds.
    pub duration_ms: Option<i64>,
}

#[Object]
impl WebhookDelivery {
    /// Stable id; the `webhook-id` header of every attempt.
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// The event (`execution.succeeded`, `budget.warning`, …).
    async fn event_type(&self) -> &str {
        &self.0.event_type
    }
    /// The body sent: `{type, timestamp, data}`.
    async fn payload(&self) -> Json<&serde_json::Value> {
        Json(&self.0.payload)
    }
    /// PENDING (waiting for an attempt), DELIVERED or FAILED.
    async fn status(&self) -> DeliveryStatus {
        self.0.status
    }
    /// Attempts made.
    async fn attempt_count(&self) -> i32 {
        self.0.attempt_count
    }
    /// Every attempt, oldest first.
    async fn attempts(&self) -> Vec<WebhookAttempt> {
        let Some(list) = self.0.attempts.as_array() else {
            return Vec::new();
        };
        list.iter()
            .map(|a| WebhookAttempt {
                at: a["at"]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc)),
                status_code: a["statusCode"].as_i64().and_then(|s| i32::try_from(s).ok()),
                error: a["error"].as_str().map(str::to_owned),
                duration_ms: a["durationMs"].as_i64(),
            })
            .collect()
    }
    /// When the next attempt is due (PENDING only).
    async fn next_attempt_at(&self) -> Option<DateTime<Utc>> {
        (self.0.status == DeliveryStatus::Pending).then_some(self.0.next_attempt_at)
    }
    /// When the endpoint accepted it.
    async fn delivered_at(&self) -> Option<DateTime<Utc>> {
        self.0.delivered_at
    }
    /// When the event happened.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

/// A webhook with its signing secret, shown only when it is made or rotated.
#[derive(SimpleObject)]
pub struct WebhookWithSecret {
    /// The webhook.
    pub webhook: Webhook,
    /// The signing secret (`whsec_…`): verify deliveries with any Standard Webhooks library.
    /// Shown this once.
    pub secret: String,
}

/// A webhook to register.
#[derive(InputObject)]
pub struct CreateWebhookInput {
    /// The endpoint: https (plain http in development only), a public address unless the
    /// operator allows it.
    pub url: String,
    /// The events it receives (at least one).
    pub events: Vec<WebhookEvent>,
    /// A note (at most 500 characters).
    pub description: Option<String>,
}

/// Changes to a webhook (what is left out stays).
#[derive(InputObject)]
pub struct UpdateWebhookInput {
    /// The endpoint.
    pub url: Option<String>,
    /// The events it receives.
    pub events: Option<Vec<WebhookEvent>>,
    /// A note.
    pub description: Option<String>,
    /// Whether deliveries are made.
    pub is_active: Option<bool>,
}

/// Webhook queries.
#[derive(Default)]
pub struct WebhooksQuery;

#[Object]
impl WebhooksQuery {
    /// Your webhooks, oldest first.
    #[graphql(guard = "RoleGuard::USER")]
    async fn webhooks(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Webhook>> {
        let viewer = request_context(ctx)?.viewer()?;
        let rows = service::list(state(ctx)?, viewer).await?;
        Ok(rows.into_iter().map(Webhook).collect())
    }

    /// One of your webhooks (null when there is no such webhook of yours).
    #[graphql(guard = "RoleGuard::USER")]
    async fn webhook(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Webhook>> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        match service::get(state(ctx)?, viewer, id).await {
            Ok(row) => Ok(Some(Webhook(row))),
            Err(crate::error::AppError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Webhook mutations.
#[derive(Default)]
pub struct WebhooksMutation;

#[Object]
impl WebhooksMutation {
    /// Registers an endpoint (at most 10 per user); the answer carries its signing secret,
    /// shown this once.
    #[graphql(guard = "RoleGuard::USER")]
    async fn create_webhook(
        &self,
        ctx: &Context<'_>,
        input: CreateWebhookInput,
    ) -> async_graphql::Result<WebhookWithSecret> {
        let viewer = request_context(ctx)?.viewer()?;
        let (row, secret) = service::create(
            state(ctx)?,
            viewer,
            &input.url,
            &input.events,
            input.description.as_deref(),
        )
        .await?;
        Ok(WebhookWithSecret {
            webhook: Webhook(row),
            secret: secret.expose_secret().to_owned(),
        })
    }

    /// Changes a webhook's URL, events, description or active flag.
    #[graphql(guard = "RoleGuard::USER")]
    async fn update_webhook(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateWebhookInput,
    ) -> async_graphql::Result<Webhook> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        let row = service::update(
            state(ctx)?,
            viewer,
            id,
            input.url.as_deref(),
            input.events.as_deref(),
            input.description.as_deref(),
            input.is_active,
        )
        .await?;
        Ok(Webhook(row))
    }

    /// Deletes a webhook and its deliveries.
    #[graphql(guard = "RoleGuard::USER")]
    async fn delete_webhook(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        Ok(service::delete(state(ctx)?, viewer, id).await?)
    }

    /// Replaces a webhook's signing secret; the answer carries the new one, shown this once.
    #[graphql(guard = "RoleGuard::USER")]
    async fn rotate_webhook_secret(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<WebhookWithSecret> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        let (row, secret) = service::rotate_secret(state(ctx)?, viewer, id).await?;
        Ok(WebhookWithSecret {
            webhook: Webhook(row),
            secret: secret.expose_secret().to_owned(),
        })
    }

    /// Queues a `webhook.test` delivery to the webhook and returns it (follow it in
    /// `deliveries`).
    #[graphql(guard = "RoleGuard::USER")]
    async fn test_webhook(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<WebhookDelivery> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        Ok(WebhookDelivery(
            service::test(state(ctx)?, viewer, id).await?,
        ))
    }
}
