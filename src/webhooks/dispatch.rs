//! The dispatcher: one task per instance that claims due deliveries from the queue in
//! PostgreSQL and POSTs them, signed, through the egress-checked client (no redirects, no
//! internal addresses). A claim moves the delivery's next attempt a lease ahead, so an instance
//! that dies mid-attempt leaves it to be retried; SKIP LOCKED keeps instances off each other's
//! rows. A 2xx answer delivers it; anything else is retried with backoff
//! (`AGENTRY_WEBHOOK_RETRY_BASE_MS`, six times longer each time, at most 10 h) until
//! `AGENTRY_WEBHOOK_MAX_ATTEMPTS`, then FAILED. Every attempt is recorded on the delivery.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use chrono::Utc;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::{
    state::AppState,
    webhooks::{
        model::{self, Attempt, Claimed, WebhookEvent},
        service::{reveal, sign},
    },
};

/// Most attempts in flight at once per instance (one per webhook at a time).
const CONCURRENCY: usize = 8;
/// Longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(10 * 3600);
/// Finished deliveries older than this are deleted.
const RETENTION_DAYS: i32 = 30;
/// How often old deliveries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Starts the dispatcher. It claims new work whenever a slot is free (at most one attempt per
/// webhook at a time, so a slow endpoint holds one slot, not all), stops claiming when the
/// server begins to shut down, and runs until aborted.
pub fn spawn(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let poll = Duration::from_millis(state.config.webhook_poll_ms);
        let mut in_flight: JoinSet<Uuid> = JoinSet::new();
        let mut busy: HashSet<Uuid> = HashSet::new();
        let mut last_prune = Instant::now();
        loop {
            let free = CONCURRENCY.saturating_sub(in_flight.len());
            if free > 0 && !state.shutting_down() {
                let busy_now: Vec<Uuid> = busy.iter().copied().collect();
                match claim(&state, free, &busy_now).await {
                    Ok(claimed) => {
                        for delivery in claimed {
                            busy.insert(delivery.webhook_id);
                            let state = state.clone();
                            in_flight.spawn(async move {
                                let webhook = delivery.webhook_id;
                                attempt(&state, delivery).await;
                                webhook
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook queue: could not claim deliveries")
                    }
                }
            }
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = Instant::now();
                prune(&state).await;
            }
            // Wait for a slot to free up or the next poll, whichever comes first.
            tokio::select! {
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    if let Ok(webhook) = done {
                        busy.remove(&webhook);
                    }
                    while let Some(done) = in_flight.try_join_next() {
                        if let Ok(webhook) = done {
                            busy.remove(&webhook);
                        }
                    }
                }
                () = tokio::time::sleep(poll) => {}
            }
        }
    })
}

async fn claim(state: &AppState, free: usize, busy: &[Uuid]) -> anyhow::Result<Vec<Claimed>> {
    let mut conn = state.pool.get().await?;
    // The lease outlasts an attempt with its waits for a pooled connection on either side, so
    // a live attempt is not claimed again (and if it were, the fence in `record_attempt` keeps
    // the second answer from overwriting the first).
    let lease = Duration::from_secs(state.config.webhook_timeout_secs + 60);
    let limit = i64::try_from(free).unwrap_or(1);
    Ok(model::claim_due(&mut conn, limit, lease, busy).await?)
}

async fn prune(state: &AppState) {
    let result = async {
        let mut conn = state.pool.get().await?;
        anyhow::Ok(model::prune_finished(&mut conn, RETENTION_DAYS).await?)
    }
    .await;
    match result {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            deleted = n,
            "pruned webhook deliveries older than {RETENTION_DAYS} days"
        ),
        Err(e) => tracing::warn!(error = %e, "webhook queue: could not prune old deliveries"),
    }
}

/// How long to wait before attempt `attempts + 1`, after `attempts` failed ones.
pub fn backoff(base: Duration, attempts: u32) -> Duration {
    let factor = 6u32.saturating_pow(attempts.saturating_sub(1));
    base.saturating_mul(factor).min(MAX_BACKOFF)
}

/// Makes one attempt at `delivery` and records it. A delivery of a webhook made inactive since
/// it was queued ends FAILED with that reason (a `webhook.test` goes out regardless).
async fn attempt(state: &AppState, delivery: Claimed) {
    let id = delivery.id;
    let result = async {
        let is_test = delivery.event_type == WebhookEvent::WebhookTest.wire_type();
        let (outcome, retry_at) = if !delivery.is_active && !is_test {
            let outcome = Attempt {
                at: Utc::now(),
                status_code: None,
                error: Some("not sent: the webhook is inactive".into()),
                duration_ms: 0,
            };
            (outcome, None)
        } else {
            let outcome = post(state, &delivery).await;
            let attempts = u32::try_from(delivery.attempt_count).unwrap_or(0) + 1;
            let retry_at = (attempts < state.config.webhook_max_attempts).then(|| {
                let wait = backoff(
                    Duration::from_millis(state.config.webhook_retry_base_ms),
                    attempts,
                );
                Utc::now()
                    + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::hours(10))
            });
            (outcome, retry_at)
        };
        if !outcome.succeeded() {
            tracing::info!(
                webhook.delivery = %id,
                webhook.id = %delivery.webhook_id,
                attempt = delivery.attempt_count + 1,
                status = outcome.status_code,
                error = outcome.error.as_deref().unwrap_or(""),
                given_up = retry_at.is_none(),
                "webhook delivery attempt failed"
            );
        }
        let mut conn = state.pool.get().await?;
        let written =
            model::record_attempt(&mut conn, id, delivery.attempt_count, &outcome, retry_at)
                .await?;
        if !written {
            tracing::warn!(webhook.delivery = %id, "webhook delivery was attempted again elsewhere: this attempt's outcome is dropped");
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        // The claim lapses and the attempt is made again.
        tracing::warn!(webhook.delivery = %id, error = %e, "webhook delivery could not be recorded");
    }
}

/// POSTs the delivery, signed; what the endpoint answered.
async fn post(state: &AppState, delivery: &Claimed) -> Attempt {
    let at = Utc::now();
    let started = Instant::now();
    let finish = |status_code: Option<u16>, error: Option<String>| Attempt {
        at,
        status_code,
        error,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    if let Err(refused) = state.tool_egress.check_url(&delivery.url) {
        return finish(None, Some(refused));
    }
    let secret = match reveal(
        &state.vault,
        delivery.webhook_id,
        delivery.user_id,
        &delivery.secret_ciphertext,
    ) {
        Ok(secret) => secret,
        Err(e) => {
            tracing::error!(webhook.id = %delivery.webhook_id, error = %e, "webhook secret unreadable");
            return finish(None, Some("the webhook's secret could not be read".into()));
        }
    };
    let body = delivery.payload.to_string();
    let timestamp = at.timestamp();
    let msg_id = delivery.id.to_string();
    let signature = match sign(&secret, &msg_id, timestamp, &body) {
        Ok(signature) => signature,
        Err(e) => {
            tracing::error!(webhook.id = %delivery.webhook_id, error = %e, "webhook secret unusable");
            return finish(None, Some("the webhook's secret could not be used".into()));
        }
    };
    // The client of user-given URLs: public addresses only (checked at connect time, so a DNS
    // answer cannot switch to an internal one), none of the operator's allowlist, no redirects.
    let sent = state
        .tool_http
        .post(&delivery.url)
        .timeout(Duration::from_secs(state.config.webhook_timeout_secs))
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("Agentry-Webhooks/", env!("CARGO_PKG_VERSION")),
        )
        .header("webhook-id", &msg_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(response) => {
            let status = response.status().as_u16();
            // The body is not needed: drop it unread (bounded by the timeout either way).
            drop(response);
            let error = (!(200..300).contains(&status))
                .then(|| format!("the endpoint answered HTTP {status}"));
            finish(Some(status), error)
        }
        Err(e) => {
            let reason = if e.is_timeout() {
                format!("no answer within {} s", state.config.webhook_timeout_secs)
            } else if e.is_connect() {
                "could not connect (refused, unreachable, or an address the egress policy forbids)"
                    .to_owned()
            } else {
                "the request failed before an answer".to_owned()
            };
            finish(None, Some(reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_six_times_longer_each_time_up_to_ten_hours() {
        let base = Duration::from_secs(5);
        assert_eq!(backoff(base, 1), Duration::from_secs(5));
        assert_eq!(backoff(base, 2), Duration::from_secs(30));
        assert_eq!(backoff(base, 3), Duration::from_secs(180));
        assert_eq!(backoff(base, 7), MAX_BACKOFF);
        assert_eq!(backoff(base, 40), MAX_BACKOFF);
    }
}
