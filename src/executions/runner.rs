//! The runner: one task per run. It opens the provider stream, appends events (deltas batched
//! every few tens of milliseconds; no gaps), keeps the assembled output, and ends the run with
//! usage, cost and exactly one terminal event. Cancellation and the per-run timeout drop the
//! provider stream, which aborts the upstream request: no more tokens are paid for.
//!
//! Every write is conditional on the run still being RUNNING here, so a run that recovery
//! declared dead (or that ended otherwise) is never written to again.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use serde_json::json;
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    agents::{model::AgentRow, service::system_prompt},
    api_keys::{model::ApiKeyRow, service::reveal},
    db::schema::{api_keys, executions},
    executions::{
        hub::{EXECUTION_CHANNEL, RUN_CHANNEL, notify},
        model::{ExecutionRow, kind, status},
    },
    llm::{
        ProviderKind,
        provider::{ChatRequest, ProviderError, StreamEvent, for_kind, open_with_retries},
    },
    state::AppState,
};

/// How long deltas are gathered before they are written as one event.
const FLUSH_EVERY: Duration = Duration::from_millis(40);
/// A delta buffer this large is written at once.
const FLUSH_BYTES: usize = 4096;

/// How a run ended.
#[derive(Debug)]
enum Outcome {
    Succeeded,
    Failed(String),
    Cancelled,
    TimedOut,
    /// Someone else ended the run (recovery): write nothing more.
    Lost,
}

/// Starts the runner task for a freshly created run.
pub fn spawn(state: AppState, execution: ExecutionRow, agent: AgentRow, key: ApiKeyRow) {
    tokio::spawn(async move {
        let id = execution.id;
        if let Err(e) = run(&state, execution, agent, key).await {
            // The run could not be ended cleanly; recovery will end it when its heartbeat stops.
            tracing::error!(execution.id = %id, error = ?e, "runner failed");
        }
        state.hub.unregister_runner(id);
    });
}

/// Writes one run's events, tracking the next sequence number.
struct Writer<'a> {
    state: &'a AppState,
    execution: ExecutionRow,
    sequence: i32,
    pending: String,
    output_len: usize,
    last_write: Instant,
}

impl Writer<'_> {
    /// Appends buffered deltas as one OUTPUT_DELTA event; false when the run is no longer ours.
    async fn flush(&mut self, conn: &mut AsyncPgConnection) -> anyhow::Result<bool> {
        if self.pending.is_empty() {
            return Ok(true);
        }
        let delta = std::mem::take(&mut self.pending);
        let sequence = self.sequence + 1;
        // One statement: append the event and the output, refresh the heartbeat, but only while
        // the run is still RUNNING.
        let written = diesel::sql_query(
            "WITH run AS ( \
                 UPDATE executions SET output = output || $2, last_sequence = $3, heartbeat_at = now() \
                 WHERE id = $1 AND status = 'RUNNING' RETURNING id) \
             INSERT INTO execution_events (execution_id, sequence, kind, delta) \
             SELECT id, $3, 'OUTPUT_DELTA', $2 FROM run",
        )
        .bind::<diesel::sql_types::Uuid, _>(self.execution.id)
        .bind::<diesel::sql_types::Text, _>(&delta)
        .bind::<diesel::sql_types::Integer, _>(sequence)
        .execute(conn)
        .await?;
        if written == 0 {
            return Ok(false);
        }
        self.sequence = sequence;
        self.output_len += delta.len();
        self.last_write = Instant::now();
        notify(
            conn,
            RUN_CHANNEL,
            &format!("{}:{sequence}", self.execution.id),
        )
        .await?;
        Ok(true)
    }

    /// Refreshes the heartbeat when nothing was written for a while.
    async fn heartbeat(
        &mut self,
        conn: &mut AsyncPgConnection,
        every: Duration,
    ) -> anyhow::Result<bool> {
        if self.last_write.elapsed() < every {
            return Ok(true);
        }
        let n = diesel::update(executions::table.find(self.execution.id))
            .filter(executions::status.eq(status::RUNNING))
            .set(executions::heartbeat_at.eq(diesel::dsl::now))
            .execute(conn)
            .await?;
        self.last_write = Instant::now();
        Ok(n == 1)
    }
}

async fn run(
    state: &AppState,
    execution: ExecutionRow,
    agent: AgentRow,
    key: ApiKeyRow,
) -> anyhow::Result<()> {
    let mut cancelled = state.hub.register_runner(execution.id);
    let mut conn = state.pool.get().await?;
    // QUEUED → RUNNING with the STARTED event, unless it was cancelled while queued.
    let started: Option<bool> = diesel::update(executions::table.find(execution.id))
        .filter(executions::status.eq(status::QUEUED))
        .set((
            executions::status.eq(status::RUNNING),
            executions::started_at.eq(diesel::dsl::now),
            executions::heartbeat_at.eq(diesel::dsl::now),
            executions::last_sequence.eq(1),
        ))
        .returning(executions::cancel_requested)
        .get_result(&mut conn)
        .await
        .optional()?;
    let Some(cancel_requested) = started else {
        return Ok(()); // ended by someone else before it started
    };
    insert_event(
        &mut conn,
        execution.id,
        1,
        kind::STARTED,
        json!({"model": execution.model, "provider": execution.provider}),
    )
    .await?;
    notify(&mut conn, RUN_CHANNEL, &format!("{}:1", execution.id)).await?;
    notify(
        &mut conn,
        EXECUTION_CHANNEL,
        &format!("{}:{}", execution.id, execution.user_id),
    )
    .await?;

    let request = ChatRequest {
        model: agent.model.clone(),
        system: system_prompt(&agent),
        user: execution.input.clone(),
        temperature: agent.temperature,
        max_output_tokens: agent.max_output_tokens.and_then(|n| u32::try_from(n).ok()),
    };
    let mut writer = Writer {
        state,
        execution,
        sequence: 1,
        pending: String::new(),
        output_len: 0,
        last_write: Instant::now(),
    };
    let config = &state.config;
    let deadline = tokio::time::sleep(Duration::from_secs(config.execution_timeout_secs));
    tokio::pin!(deadline);
    let heartbeat_every = Duration::from_secs(config.execution_heartbeat_secs);
    let mut usage: Option<(i64, i64)> = None;

    let outcome = if cancel_requested || *cancelled.borrow() {
        Outcome::Cancelled
    } else {
        let provider_kind = ProviderKind::from_stored(&key.provider)
            .ok_or_else(|| anyhow::anyhow!("unknown provider {}", key.provider))?;
        let secret = reveal(&state.vault, &key).map_err(|e| anyhow::anyhow!(e.message()))?;
        let provider = for_kind(
            provider_kind,
            state.http.clone(),
            provider_kind
                .base_url(config, key.endpoint.as_deref())
                .to_owned(),
            secret,
            Duration::from_secs(config.provider_timeout_secs),
        );
        let opening = open_with_retries(
            provider.as_ref(),
            &request,
            config.provider_max_attempts,
            Duration::from_millis(config.provider_retry_base_ms),
        );
        let opening_started = Instant::now();
        tokio::pin!(opening);
        // Retries may take a while: keep the heartbeat going meanwhile.
        let mut beat = tokio::time::interval(heartbeat_every);
        let opened = loop {
            tokio::select! {
                opened = &mut opening => break Ok(opened),
                () = crate::state::until_set(&mut cancelled) => break Err(Outcome::Cancelled),
                () = &mut deadline => break Err(Outcome::TimedOut),
                _ = beat.tick() => {
                    if !writer.heartbeat(&mut conn, Duration::ZERO).await? {
                        break Err(Outcome::Lost);
                    }
                }
            }
        };
        metrics::histogram!(crate::telemetry::names::PROVIDER_LATENCY, "provider" => provider_kind.as_str())
            .record(opening_started.elapsed().as_secs_f64());
        match opened {
            Err(outcome) => outcome,
            Ok(Err(e)) => Outcome::Failed(failure_message(&e)),
            Ok(Ok(mut stream)) => {
                let mut tick = tokio::time::interval(FLUSH_EVERY);
                let outcome = loop {
                    tokio::select! {
                        biased;
                        () = crate::state::until_set(&mut cancelled) => break Outcome::Cancelled,
                        () = &mut deadline => break Outcome::TimedOut,
                        // Before the stream, so a fast stream cannot starve the batched writes.
                        _ = tick.tick() => {
                            if !writer.flush(&mut conn).await? || !writer.heartbeat(&mut conn, heartbeat_every).await? {
                                break Outcome::Lost;
                            }
                        }
                        item = stream.next() => match item {
                            Some(Ok(StreamEvent::Delta(text))) => {
                                writer.pending.push_str(&text);
                                if writer.pending.len() >= FLUSH_BYTES && !writer.flush(&mut conn).await? {
                                    break Outcome::Lost;
                                }
                            }
                            Some(Ok(StreamEvent::Usage { input_tokens, output_tokens })) => {
                                usage = Some((input_tokens, output_tokens));
                            }
                            Some(Ok(StreamEvent::Finished { .. })) => break Outcome::Succeeded,
                            Some(Err(e)) => break Outcome::Failed(failure_message(&e)),
                            None => break Outcome::Failed("the provider stream ended without finishing".into()),
                        },
                    }
                };
                // Dropping the stream closes the provider connection (cancel, timeout, error).
                drop(stream);
                outcome
            }
        }
    };
    // A stop during shutdown is not the user's cancel: the run failed, and says why.
    let outcome = match outcome {
        Outcome::Cancelled if state.shutting_down() => {
            Outcome::Failed("the server shut down during the run: start it again".into())
        }
        other => other,
    };
    let outcome = match outcome {
        Outcome::Lost => Outcome::Lost,
        other => {
            // Keep what was produced, whatever the ending.
            if writer.flush(&mut conn).await? {
                other
            } else {
                Outcome::Lost
            }
        }
    };
    finish(&mut conn, &mut writer, outcome, usage).await
}

fn failure_message(e: &ProviderError) -> String {
    e.to_string()
}

async fn insert_event(
    conn: &mut AsyncPgConnection,
    execution_id: Uuid,
    sequence: i32,
    kind: &str,
    data: serde_json::Value,
) -> anyhow::Result<()> {
    use crate::db::schema::execution_events;
    diesel::insert_into(execution_events::table)
        .values((
            execution_events::execution_id.eq(execution_id),
            execution_events::sequence.eq(sequence),
            execution_events::kind.eq(kind),
            execution_events::data.eq(Some(data)),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Rough token count when a provider reports none: about four characters a token.
fn estimate_tokens(chars: usize) -> i64 {
    i64::try_from(chars.div_ceil(4)).unwrap_or(i64::MAX)
}

/// Ends the run: USAGE and the terminal event, status, tokens and cost, and the key's usage,
/// in one transaction; then wakes subscribers.
async fn finish(
    conn: &mut AsyncPgConnection,
    writer: &mut Writer<'_>,
    outcome: Outcome,
    usage: Option<(i64, i64)>,
) -> anyhow::Result<()> {
    let (final_status, terminal, error) = match outcome {
        Outcome::Lost => return Ok(()),
        Outcome::Succeeded => (status::SUCCEEDED, kind::COMPLETED, None),
        Outcome::Failed(message) => (status::FAILED, kind::FAILED, Some(message)),
        Outcome::Cancelled => (status::CANCELLED, kind::CANCELLED, None),
        Outcome::TimedOut => (
            status::TIMED_OUT,
            kind::TIMED_OUT,
            Some(format!(
                "the run exceeded {} s",
                writer.state.config.execution_timeout_secs
            )),
        ),
    };
    let execution = &writer.execution;
    let (input_tokens, output_tokens, tokens_estimated) = match usage {
        Some((input, output)) => (input, output, false),
        None => {
            let output_chars = writer.output_len;
            if output_chars == 0 && final_status != status::SUCCEEDED {
                (0, 0, false) // nothing was produced: nothing to estimate
            } else {
                (
                    estimate_tokens(execution.input.len() + 200),
                    estimate_tokens(output_chars),
                    true,
                )
            }
        }
    };
    let priced = writer
        .state
        .pricing
        .cost_micros(&execution.model, input_tokens, output_tokens);
    let cost_micros = priced.unwrap_or(0);
    let cost_estimated = tokens_estimated || (priced.is_none() && input_tokens + output_tokens > 0);
    let usage_sequence = writer.sequence + 1;
    let terminal_sequence = writer.sequence + 2;
    let usage_data = json!({
        "inputTokens": input_tokens,
        "outputTokens": output_tokens,
        "costUsd": cost_micros as f64 / 1_000_000.0,
        "costEstimated": cost_estimated,
    });
    let terminal_data = match &error {
        Some(message) => json!({ "status": final_status, "error": message }),
        None => json!({ "status": final_status }),
    };
    let (id, key_id) = (execution.id, execution.api_key_id);
    let ended = {
        use diesel_async::AsyncConnection;
        let error = error.clone();
        conn.transaction::<bool, anyhow::Error, _>(async move |conn| {
            let n = diesel::update(executions::table.find(id))
                .filter(executions::status.eq(status::RUNNING))
                .set((
                    executions::status.eq(final_status),
                    executions::error.eq(error),
                    executions::input_tokens.eq(input_tokens),
                    executions::output_tokens.eq(output_tokens),
                    executions::cost_micros.eq(cost_micros),
                    executions::cost_estimated.eq(cost_estimated),
                    executions::last_sequence.eq(terminal_sequence),
                    executions::finished_at.eq(diesel::dsl::now),
                ))
                .execute(conn)
                .await?;
            if n == 0 {
                return Ok(false);
            }
            insert_event(conn, id, usage_sequence, kind::USAGE, usage_data).await?;
            insert_event(conn, id, terminal_sequence, terminal, terminal_data).await?;
            if let Some(key_id) = key_id {
                diesel::update(api_keys::table.find(key_id))
                    .set(api_keys::last_used_at.eq(diesel::dsl::now))
                    .execute(conn)
                    .await?;
            }
            notify(conn, RUN_CHANNEL, &format!("{id}:{terminal_sequence}")).await?;
            notify(
                conn,
                EXECUTION_CHANNEL,
                &format!("{id}:{}", execution.user_id),
            )
            .await?;
            Ok(true)
        })
        .await?
    };
    if ended {
        let provider = execution.provider.clone();
        metrics::counter!(crate::telemetry::names::RUNS, "status" => final_status, "provider" => provider.clone()).increment(1);
        metrics::counter!(crate::telemetry::names::TOKENS, "provider" => provider.clone(), "direction" => "input")
            .increment(u64::try_from(input_tokens).unwrap_or(0));
        metrics::counter!(crate::telemetry::names::TOKENS, "provider" => provider, "direction" => "output")
            .increment(u64::try_from(output_tokens).unwrap_or(0));
        writer.sequence = terminal_sequence;
        tracing::info!(
            execution.id = %id,
            status = final_status,
            input_tokens,
            output_tokens,
            cost_micros,
            "run ended"
        );
    }
    Ok(())
}
