//! Rows of `webhooks` and `webhook_deliveries`, and the queue queries: enqueue (inside the
//! transaction of the event), claim (SKIP LOCKED, with a lease), record an attempt.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::{webhook_deliveries, webhooks};

/// Most webhooks one user may register (also the most deliveries one event makes).
pub const MAX_WEBHOOKS_PER_USER: usize = 10;

crate::text_enum! {
    /// An event a webhook can receive.
    pub enum WebhookEvent {
        /// A run ended SUCCEEDED (`execution.succeeded`).
        ExecutionSucceeded => "EXECUTION_SUCCEEDED",
        /// A run ended FAILED (`execution.failed`; a budget's stop included).
        ExecutionFailed => "EXECUTION_FAILED",
        /// A run ended TIMED_OUT (`execution.timed_out`).
        ExecutionTimedOut => "EXECUTION_TIMED_OUT",
        /// A run was cancelled (`execution.cancelled`).
        ExecutionCancelled => "EXECUTION_CANCELLED",
        /// A provider rejected one of the user's keys (`api_key.rejected`), in a run or a key test.
        ApiKeyRejected => "API_KEY_REJECTED",
        /// A budget's month reached 80% of its limit (`budget.warning`).
        BudgetWarning => "BUDGET_WARNING",
        /// A budget's month reached its limit (`budget.exceeded`).
        BudgetExceeded => "BUDGET_EXCEEDED",
        /// Sent by `testWebhook` only (`webhook.test`); not subscribable.
        WebhookTest => "WEBHOOK_TEST",
    }
}

impl WebhookEvent {
    /// The `type` of the payload, Standard Webhooks style (`execution.succeeded`).
    pub const fn wire_type(self) -> &'static str {
        match self {
            Self::ExecutionSucceeded => "execution.succeeded",
            Self::ExecutionFailed => "execution.failed",
            Self::ExecutionTimedOut => "execution.timed_out",
            Self::ExecutionCancelled => "execution.cancelled",
            Self::ApiKeyRejected => "api_key.rejected",
            Self::BudgetWarning => "budget.warning",
            Self::BudgetExceeded => "budget.exceeded",
            Self::WebhookTest => "webhook.test",
        }
    }
}

crate::text_enum! {
    /// Where a delivery is.
    pub enum DeliveryStatus {
        /// Waiting for its next attempt.
        Pending => "PENDING",
        /// The endpoint answered 2xx.
        Delivered => "DELIVERED",
        /// Every attempt failed (or the webhook was disabled before it went out).
        Failed => "FAILED",
    }
}

/// A registered endpoint.
#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = webhooks)]
pub struct WebhookRow {
    /// Stable id.
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// Where deliveries are POSTed.
    pub url: String,
    /// The user's note.
    pub description: String,
    /// Stored names of the events it receives.
    pub events: Vec<String>,
    /// The signing secret, encrypted (vault).
    pub secret_ciphertext: Vec<u8>,
    /// Whether deliveries are made.
    pub is_active: bool,
    /// Registered.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// One event's delivery to one endpoint.
#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = webhook_deliveries)]
pub struct DeliveryRow {
    /// Stable id; the `webhook-id` header.
    pub id: Uuid,
    /// The endpoint.
    pub webhook_id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// The payload's `type`.
    pub event_type: String,
    /// The body, the same on every attempt.
    pub payload: serde_json::Value,
    /// Where it is.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempt_count: i32,
    /// One object per attempt (`at`, `statusCode`, `error`, `durationMs`).
    pub attempts: serde_json::Value,
    /// When the next attempt is due (or an in-flight claim lapses).
    pub next_attempt_at: DateTime<Utc>,
    /// When the endpoint accepted it.
    pub delivered_at: Option<DateTime<Utc>>,
    /// When the event happened.
    pub created_at: DateTime<Utc>,
}

/// Queues the delivery of an event to every active webhook of `user_id` that receives it, in
/// the caller's transaction; returns how many were queued. One statement.
pub async fn enqueue(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    event: WebhookEvent,
    payload: &serde_json::Value,
) -> QueryResult<usize> {
    use diesel::sql_types::{Array, Jsonb, Text, Uuid as SqlUuid};
    // UUIDv7 ids made here, one per possible endpoint, numbered by the row.
    let ids: Vec<Uuid> = (0..MAX_WEBHOOKS_PER_USER).map(|_| Uuid::now_v7()).collect();
    diesel::sql_query(
        "INSERT INTO webhook_deliveries (id, webhook_id, user_id, event_type, payload) \
         SELECT ($4::uuid[])[n], id, user_id, $3, $5 FROM ( \
             SELECT id, user_id, row_number() OVER (ORDER BY id) AS n FROM webhooks \
             WHERE user_id = $1 AND is_active AND $2 = ANY (events)) w \
         WHERE n <= cardinality($4::uuid[])",
    )
    .bind::<SqlUuid, _>(user_id)
    .bind::<Text, _>(event.as_str())
    .bind::<Text, _>(event.wire_type())
    .bind::<Array<SqlUuid>, _>(ids)
    .bind::<Jsonb, _>(payload)
    .execute(conn)
    .await
}

/// A claimed delivery, with what sending it needs.
#[derive(Debug, Clone, QueryableByName)]
pub struct Claimed {
    /// The delivery.
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub id: Uuid,
    /// Its owner.
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub user_id: Uuid,
    /// The endpoint's id.
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub webhook_id: Uuid,
    /// The payload's `type`.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub event_type: String,
    /// The body.
    #[diesel(sql_type = diesel::sql_types::Jsonb)]
    pub payload: serde_json::Value,
    /// Attempts before this one (also the claim's fence: the attempt is recorded only while
    /// the count is still this).
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub attempt_count: i32,
    /// The endpoint.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub url: String,
    /// Its encrypted secret.
    #[diesel(sql_type = diesel::sql_types::Bytea)]
    pub secret_ciphertext: Vec<u8>,
    /// Whether it is still active.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub is_active: bool,
}

/// Claims up to `limit` due deliveries for this instance, at most one per webhook and none of
/// the webhooks in `busy` (those this instance is already sending to), so one slow endpoint
/// cannot take every slot. A claim moves the next attempt `lease` ahead: a crash mid-attempt is
/// retried once the lease lapses, and SKIP LOCKED keeps two instances off the same row.
pub async fn claim_due(
    conn: &mut AsyncPgConnection,
    limit: i64,
    lease: std::time::Duration,
    busy: &[Uuid],
) -> QueryResult<Vec<Claimed>> {
    use diesel::sql_types::{Array, BigInt, Double, Uuid as SqlUuid};
    diesel::sql_query(
        "WITH ranked AS ( \
             SELECT id, row_number() OVER (PARTITION BY webhook_id ORDER BY next_attempt_at) AS r \
             FROM (SELECT id, webhook_id, next_attempt_at FROM webhook_deliveries \
                   WHERE status = 'PENDING' AND next_attempt_at <= now() \
                     AND webhook_id <> ALL ($3) \
                   ORDER BY next_attempt_at LIMIT 500) due), \
         picked AS MATERIALIZED ( \
             SELECT d.id FROM webhook_deliveries d JOIN ranked ON ranked.id = d.id AND ranked.r = 1 \
             WHERE d.status = 'PENDING' AND d.next_attempt_at <= now() \
             ORDER BY d.next_attempt_at LIMIT $1 \
             FOR UPDATE OF d SKIP LOCKED) \
         UPDATE webhook_deliveries d SET next_attempt_at = now() + make_interval(secs => $2) \
         FROM webhooks w, picked \
         WHERE w.id = d.webhook_id AND d.id = picked.id \
         RETURNING d.id, d.user_id, d.webhook_id, d.event_type, d.payload, d.attempt_count, \
                   w.url, w.secret_ciphertext, w.is_active",
    )
    .bind::<BigInt, _>(limit)
    .bind::<Double, _>(lease.as_secs_f64())
    .bind::<Array<SqlUuid>, _>(busy)
    .load(conn)
    .await
}

/// What one attempt found.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// When it was made.
    pub at: DateTime<Utc>,
    /// The endpoint's HTTP status, if it answered.
    pub status_code: Option<u16>,
    /// Why it failed, if it did (no secrets in it).
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: u64,
}

impl Attempt {
    /// Whether the endpoint accepted the delivery (2xx).
    pub fn succeeded(&self) -> bool {
        self.error.is_none() && self.status_code.is_some_and(|s| (200..300).contains(&s))
    }
}

/// Records an attempt: DELIVERED on success; otherwise FAILED when `retry_at` is `None` (no
/// attempts left), else PENDING until `retry_at`. Fenced by the claim: written only while the
/// delivery is still PENDING with `claimed_count` attempts (a late answer from an attempt whose
/// lease lapsed, and which another instance made again, changes nothing). Returns whether it
/// was written.
pub async fn record_attempt(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    claimed_count: i32,
    attempt: &Attempt,
    retry_at: Option<DateTime<Utc>>,
) -> QueryResult<bool> {
    let entry = serde_json::json!([{
        "at": attempt.at,
        "statusCode": attempt.status_code,
        "error": attempt.error,
        "durationMs": attempt.duration_ms,
    }]);
    let (status, next, delivered) = if attempt.succeeded() {
        (DeliveryStatus::Delivered, attempt.at, Some(attempt.at))
    } else {
        match retry_at {
            Some(at) => (DeliveryStatus::Pending, at, None),
            None => (DeliveryStatus::Failed, attempt.at, None),
        }
    };
    let n = diesel::sql_query(
        "UPDATE webhook_deliveries SET status = $2, next_attempt_at = $3, delivered_at = $4, \
                attempt_count = attempt_count + 1, attempts = attempts || $5 \
         WHERE id = $1 AND status = 'PENDING' AND attempt_count = $6",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .bind::<diesel::sql_types::Text, _>(status)
    .bind::<diesel::sql_types::Timestamptz, _>(next)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>, _>(delivered)
    .bind::<diesel::sql_types::Jsonb, _>(entry)
    .bind::<diesel::sql_types::Integer, _>(claimed_count)
    .execute(conn)
    .await?;
    Ok(n == 1)
}

/// Deletes finished deliveries (DELIVERED or FAILED) created more than `days` ago; returns how
/// many.
pub async fn prune_finished(conn: &mut AsyncPgConnection, days: i32) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM webhook_deliveries WHERE status <> 'PENDING' \
           AND created_at < now() - make_interval(days => $1)",
    )
    .bind::<diesel::sql_types::Integer, _>(days)
    .execute(conn)
    .await
}

/// The changes `updateWebhook` makes: only the fields given.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = webhooks)]
pub struct WebhookChanges {
    /// New endpoint.
    pub url: Option<String>,
    /// New events.
    pub events: Option<Vec<String>>,
    /// New description.
    pub description: Option<String>,
    /// New active flag.
    pub is_active: Option<bool>,
}

/// The user's webhooks, oldest first.
pub async fn list_of(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<Vec<WebhookRow>> {
    webhooks::table
        .filter(webhooks::user_id.eq(user_id))
        .order(webhooks::id)
        .select(WebhookRow::as_select())
        .load(conn)
        .await
}

/// The user's webhook `id`, if it is theirs.
pub async fn find_owned(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    id: Uuid,
) -> QueryResult<Option<WebhookRow>> {
    webhooks::table
        .find(id)
        .filter(webhooks::user_id.eq(user_id))
        .select(WebhookRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// A page of a webhook's deliveries, newest first, before the cursor id `before`.
pub async fn deliveries_page(
    conn: &mut AsyncPgConnection,
    webhook_id: Uuid,
    status: Option<DeliveryStatus>,
    before: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<DeliveryRow>> {
    let mut query = webhook_deliveries::table
        .filter(webhook_deliveries::webhook_id.eq(webhook_id))
        .order(webhook_deliveries::id.desc())
        .limit(limit)
        .select(DeliveryRow::as_select())
        .into_boxed();
    if let Some(status) = status {
        query = query.filter(webhook_deliveries::status.eq(status));
    }
    if let Some(before) = before {
        query = query.filter(webhook_deliveries::id.lt(before));
    }
    query.load(conn).await
}

/// A page of every webhook's (id, user id, ciphertext) after `after`, for key rotation.
pub async fn page_all(
    conn: &mut AsyncPgConnection,
    after: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<(Uuid, Uuid, Vec<u8>)>> {
    let mut query = webhooks::table
        .select((webhooks::id, webhooks::user_id, webhooks::secret_ciphertext))
        .order(webhooks::id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(webhooks::id.gt(after));
    }
    query.load(conn).await
}

/// Replaces a ciphertext only if it is still `old` (a concurrent rotation wins, not us).
pub async fn swap_ciphertext(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    old: &[u8],
    new: &[u8],
) -> QueryResult<bool> {
    let n = diesel::update(webhooks::table.find(id))
        .filter(webhooks::secret_ciphertext.eq(old))
        .set(webhooks::secret_ciphertext.eq(new))
        .execute(conn)
        .await?;
    Ok(n == 1)
}
