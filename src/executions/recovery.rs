//! Recovery: a run whose process died stops sending heartbeats. Any live instance finds such
//! runs and ends them FAILED with a terminal event, so no subscriber waits forever.

use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::{
    executions::hub::{EXECUTION_CHANNEL, RUN_CHANNEL, notify},
    state::AppState,
};

/// Heartbeats a run may miss before it is declared dead.
pub const MISSED_HEARTBEATS: u64 = 6;

/// The error recorded on a recovered run.
pub const DEAD_RUNNER: &str = "the server running this execution stopped before it finished";

#[derive(diesel::QueryableByName)]
struct Recovered {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    user_id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    last_sequence: i32,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    agent_id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Uuid>)]
    api_key_id: Option<Uuid>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    model: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    provider: String,
}

/// Ends every unfinished run silent for longer than `stale`; returns how many.
pub async fn recover_stale(conn: &mut AsyncPgConnection, stale: Duration) -> anyhow::Result<usize> {
    let stale_secs = stale.as_secs_f64();
    let recovered = conn
        .transaction::<Vec<Recovered>, anyhow::Error, _>(async move |conn| {
            // SKIP LOCKED: two instances recovering at once split the work instead of waiting.
            let rows: Vec<Recovered> = diesel::sql_query(
                "UPDATE executions SET status = 'FAILED', error = $2, finished_at = now(), \
                        last_sequence = last_sequence + 1 \
                 WHERE id IN (SELECT id FROM executions \
                              WHERE status IN ('QUEUED', 'RUNNING') \
                                AND heartbeat_at < now() - make_interval(secs => $1) \
                              ORDER BY heartbeat_at LIMIT 100 FOR UPDATE SKIP LOCKED) \
                 RETURNING id, user_id, last_sequence, agent_id, api_key_id, model, provider",
            )
            .bind::<diesel::sql_types::Double, _>(stale_secs)
            .bind::<diesel::sql_types::Text, _>(DEAD_RUNNER)
            .load(conn)
            .await?;
            for row in &rows {
                diesel::sql_query(
                    "INSERT INTO execution_events (execution_id, sequence, kind, data) \
                     VALUES ($1, $2, 'FAILED', jsonb_build_object('status', 'FAILED', 'error', $3::text))",
                )
                .bind::<diesel::sql_types::Uuid, _>(row.id)
                .bind::<diesel::sql_types::Integer, _>(row.last_sequence)
                .bind::<diesel::sql_types::Text, _>(DEAD_RUNNER)
                .execute(conn)
                .await?;
                notify(conn, RUN_CHANNEL, &format!("{}:{}", row.id, row.last_sequence)).await?;
                notify(conn, EXECUTION_CHANNEL, &format!("{}:{}", row.id, row.user_id)).await?;
                let data = serde_json::json!({
                    "executionId": row.id,
                    "agentId": row.agent_id,
                    "apiKeyId": row.api_key_id,
                    "status": "FAILED",
                    "error": DEAD_RUNNER,
                    "errorCode": null,
                    "model": row.model,
                    "provider": row.provider,
                });
                let event = crate::webhooks::model::WebhookEvent::ExecutionFailed;
                crate::webhooks::service::enqueue(conn, row.user_id, event, data).await?;
            }
            Ok(rows)
        })
        .await?;
    for row in &recovered {
        tracing::warn!(execution.id = %row.id, "run declared dead (stale heartbeat): FAILED");
    }
    Ok(recovered.len())
}

/// Checks for dead runs every heartbeat period until the process ends.
pub fn spawn(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = Duration::from_secs(state.config.execution_heartbeat_secs);
        let stale = every * MISSED_HEARTBEATS as u32;
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let result = async {
                let mut conn = state.pool.get().await?;
                recover_stale(&mut conn, stale).await
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "recovery pass failed");
            }
        }
    })
}
