//! The dispatcher: one task per instance that claims due deliveries from the queue in
//! PostgreSQL and POSTs them, signed, through the egress-checked client (no redirects, no
//! internal addresses). A claim moves the delivery's next attempt a lease ahead, so an instance
//! that dies mid-attempt leaves it to be retried; SKIP LOCKED keeps instances off each other's
//! rows. A 2xx answer delivers it; anything else is retried with backoff
//! (`AGENTRY_WEBHOOK_RETRY_BASE_MS`, six times longer each time, at most 10 h) until
//! `AGENTRY_WEBHOOK_MAX_ATTEMPTS`, then FAILED. Every attempt is recorded on the delivery.

use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::StreamExt;

use crate::{
    state::AppState,
    webhooks::{
        model::{self, Attempt, Claimed},
        service::{reveal, sign},
    },
};

/// Most deliveries claimed at once.
const BATCH: i64 = 16;
/// Most attempts in flight at once per instance.
const CONCURRENCY: usize = 8;
/// Longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(10 * 3600);

/// Starts the dispatcher; it runs until aborted.
pub fn spawn(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let poll = Duration::from_millis(state.config.webhook_poll_ms);
        loop {
            let claimed = match claim(&state).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook queue: could not claim deliveries");
                    Vec::new()
                }
            };
            let full = claimed.len() as i64 == BATCH;
            futures_util::stream::iter(claimed)
                .for_each_concurrent(CONCURRENCY, |delivery| {
                    let state = state.clone();
                    async move { attempt(&state, delivery).await }
                })
                .await;
            if !full {
                tokio::time::sleep(poll).await;
            }
        }
    })
}

async fn claim(state: &AppState) -> anyhow::Result<Vec<Claimed>> {
    let mut conn = state.pool.get().await?;
    // The lease outlasts an attempt, so a live attempt is never claimed twice.
    let lease = Duration::from_secs(state.config.webhook_timeout_secs + 30);
    Ok(model::claim_due(&mut conn, BATCH, lease).await?)
}

/// How long to wait before attempt `attempts + 1`, after `attempts` failed ones.
pub fn backoff(base: Duration, attempts: u32) -> Duration {
    let factor = 6u32.saturating_pow(attempts.saturating_sub(1));
    base.saturating_mul(factor).min(MAX_BACKOFF)
}

/// Makes one attempt at `delivery` and records it.
async fn attempt(state: &AppState, delivery: Claimed) {
    let id = delivery.id;
    let result = async {
        let mut conn = state.pool.get().await?;
        if !delivery.is_active {
            model::fail_disabled(&mut conn, id).await?;
            return anyhow::Ok(());
        }
        drop(conn);
        let outcome = post(state, &delivery).await;
        let attempts = u32::try_from(delivery.attempt_count).unwrap_or(0) + 1;
        let retry_at = (attempts < state.config.webhook_max_attempts).then(|| {
            let wait = backoff(
                Duration::from_millis(state.config.webhook_retry_base_ms),
                attempts,
            );
            Utc::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::hours(10))
        });
        if !outcome.succeeded() {
            tracing::info!(
                webhook.delivery = %id,
                webhook.id = %delivery.webhook_id,
                attempts,
                status = outcome.status_code,
                error = outcome.error.as_deref().unwrap_or(""),
                given_up = retry_at.is_none(),
                "webhook delivery attempt failed"
            );
        }
        let mut conn = state.pool.get().await?;
        model::record_attempt(&mut conn, id, &outcome, retry_at).await?;
        Ok(())
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
    if let Err(refused) = state.egress.check_url(&delivery.url) {
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
    let sent = state
        .http
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
