//! The runner: one task per run. It opens the provider stream, appends events (no gaps),
//! keeps the assembled output, and ends the run with usage, cost and exactly one terminal
//! event. Cancellation and the per-run timeout drop the provider stream, which aborts the
//! upstream request: no more tokens are paid for.
//!
//! Three rules shape it:
//! - **No connection is held while waiting.** Every write borrows a pooled connection for one
//!   statement or one short transaction and gives it back, so slow providers cannot drain the
//!   pool; a busy or restarting database delays a write ([`patient`]), it does not end the run.
//! - **Adaptive batching.** A delta after a quiet spell is written at once (one token reaches
//!   watchers within milliseconds), together with whatever the provider has already delivered
//!   (a burst is one event); while tokens keep coming, they are coalesced into one write per
//!   `AGENTRY_STREAM_FLUSH_MS`, so the database work and the messages per watcher stay flat
//!   under load.
//! - **The table first, then the feed.** Each event is published to the in-process hub right
//!   after the commit that stored it; other processes learn of it by NOTIFY.
//!
//! Every write is conditional on the run still being RUNNING, so a run that recovery declared
//! dead (or that ended otherwise) is never written to again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use serde_json::json;
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    agents::{model::AgentRow, service::system_prompt},
    api_keys::{self, model::ApiKeyRow, service::reveal},
    db::{PatientError, patient, schema::executions},
    executions::{
        hub::{EXECUTION_CHANNEL, RUN_CHANNEL, notify},
        model::{self, EventKind, EventRow, ExecutionRow, ExecutionStatus},
    },
    llm::{
        ProviderKind, for_kind,
        provider::{ChatRequest, Limits, ProviderError, StreamEvent, open_with_retries},
    },
    state::AppState,
};

/// A delta buffer this large is written at once, whatever the batching window.
const FLUSH_BYTES: usize = 4096;
/// How long a runner's write waits for a busy or unavailable database before the run is
/// abandoned to recovery.
const WRITE_PATIENCE: Duration = Duration::from_secs(30);

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

/// Whether a failed write was in fact committed by an earlier attempt whose answer was lost
/// (the retry then collides with the event it already inserted).
fn already_written(e: &PatientError) -> bool {
    matches!(
        e,
        PatientError::Query(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _
        ))
    )
}

/// Writes one run's events, tracking the next sequence number.
struct Writer<'a> {
    state: &'a AppState,
    execution: ExecutionRow,
    sequence: i32,
    pending: String,
    /// Bytes of output stored so far.
    output_len: usize,
    /// Last write of any kind (heartbeats are skipped while writes keep it fresh).
    last_write: Instant,
    /// Last delta write (the batching window counts from it).
    last_flush: Option<Instant>,
}

impl Writer<'_> {
    /// Appends buffered deltas as one OUTPUT_DELTA event; false when the run is no longer ours.
    async fn flush(&mut self) -> anyhow::Result<bool> {
        if self.pending.is_empty() {
            return Ok(true);
        }
        let delta = std::mem::take(&mut self.pending);
        let sequence = self.sequence + 1;
        let id = self.execution.id;
        let at = Utc::now();
        let text = delta.clone();
        // One statement: append the event and the output, refresh the heartbeat and NOTIFY
        // other processes, but only while the run is still RUNNING. One statement is one
        // transaction, so a retry after a lost answer either redoes it or collides with it.
        let written = patient(&self.state.pool, WRITE_PATIENCE, "writing run output", move |conn| {
            let text = text.clone();
            Box::pin(async move {
                diesel::sql_query(
                    "WITH run AS ( \
                         UPDATE executions SET output = output || $2, last_sequence = $3, heartbeat_at = now() \
                         WHERE id = $1 AND status = 'RUNNING' RETURNING id), \
                     event AS ( \
                         INSERT INTO execution_events (execution_id, sequence, kind, delta, at) \
                         SELECT id, $3, 'OUTPUT_DELTA', $2, $4 FROM run RETURNING execution_id) \
                     SELECT pg_notify($5, execution_id::text || ':' || $3::text) FROM event",
                )
                .bind::<diesel::sql_types::Uuid, _>(id)
                .bind::<diesel::sql_types::Text, _>(&text)
                .bind::<diesel::sql_types::Integer, _>(sequence)
                .bind::<diesel::sql_types::Timestamptz, _>(at)
                .bind::<diesel::sql_types::Text, _>(RUN_CHANNEL)
                .execute(conn)
                .await
            })
        })
        .await;
        match written {
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(e) if already_written(&e) => {}
            Err(e) => return Err(e.into()),
        }
        self.sequence = sequence;
        self.output_len += delta.len();
        self.last_write = Instant::now();
        self.last_flush = Some(self.last_write);
        self.state.hub.publish(EventRow {
            execution_id: id,
            sequence,
            kind: EventKind::OutputDelta,
            delta: Some(delta),
            data: None,
            at,
        });
        Ok(true)
    }

    /// When the buffered deltas should be written: now after a quiet spell, else when the
    /// batching window since the last write closes.
    fn flush_due(&self, window: Duration) -> Instant {
        match self.last_flush {
            Some(last) if self.pending.len() < FLUSH_BYTES => last + window,
            _ => Instant::now(),
        }
    }

    /// Refreshes the heartbeat when nothing was written for `every`; false when the run is no
    /// longer ours.
    async fn heartbeat(&mut self, every: Duration) -> anyhow::Result<bool> {
        if self.last_write.elapsed() < every {
            return Ok(true);
        }
        let id = self.execution.id;
        let n = patient(
            &self.state.pool,
            WRITE_PATIENCE,
            "refreshing a run's heartbeat",
            move |conn| {
                Box::pin(
                    diesel::update(executions::table.find(id))
                        .filter(executions::status.eq(ExecutionStatus::Running))
                        .set(executions::heartbeat_at.eq(diesel::dsl::now))
                        .execute(conn),
                )
            },
        )
        .await?;
        self.last_write = Instant::now();
        Ok(n == 1)
    }
}

/// QUEUED → RUNNING with the STARTED event; `None` when the run was ended by someone else
/// before it started, else whether a cancel was requested while it was queued.
async fn start(state: &AppState, execution: &ExecutionRow) -> anyhow::Result<Option<bool>> {
    let (id, user_id) = (execution.id, execution.user_id);
    let at = Utc::now();
    let data = json!({"model": execution.model, "provider": execution.provider});
    let event_data = data.clone();
    let started = patient(&state.pool, WRITE_PATIENCE, "starting a run", move |conn| {
        let data = data.clone();
        Box::pin(conn.transaction(async move |conn| {
            let started: Option<bool> = diesel::update(executions::table.find(id))
                .filter(executions::status.eq(ExecutionStatus::Queued))
                .set((
                    executions::status.eq(ExecutionStatus::Running),
                    executions::started_at.eq(diesel::dsl::now),
                    executions::heartbeat_at.eq(diesel::dsl::now),
                    executions::last_sequence.eq(1),
                ))
                .returning(executions::cancel_requested)
                .get_result(conn)
                .await
                .optional()?;
            if started.is_some() {
                insert_event(conn, id, 1, EventKind::Started, data, at).await?;
                notify(conn, RUN_CHANNEL, &format!("{id}:1")).await?;
                notify(conn, EXECUTION_CHANNEL, &format!("{id}:{user_id}")).await?;
            }
            Ok(started)
        }))
    })
    .await?;
    if started.is_some() {
        state.hub.publish(EventRow {
            execution_id: id,
            sequence: 1,
            kind: EventKind::Started,
            delta: None,
            data: Some(event_data),
            at,
        });
    }
    Ok(started)
}

async fn run(
    state: &AppState,
    execution: ExecutionRow,
    agent: AgentRow,
    key: ApiKeyRow,
) -> anyhow::Result<()> {
    let mut cancelled = state.hub.register_runner(execution.id);
    let Some(cancel_requested) = start(state, &execution).await? else {
        return Ok(()); // ended by someone else before it started
    };

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
        last_flush: None,
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
        let base_url = provider_kind
            .base_url(config, key.endpoint.as_deref())
            .to_owned();
        if let Err(refused) = state.egress.check_url(&base_url) {
            return finish(&mut writer, Outcome::Failed(refused), None).await;
        }
        let provider = for_kind(
            provider_kind,
            state.http.clone(),
            base_url,
            secret,
            Limits::from_config(config),
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
                    if !writer.heartbeat(Duration::ZERO).await? {
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
            Ok(Ok(stream)) => {
                let window = Duration::from_millis(config.stream_flush_ms);
                stream_output(
                    &mut writer,
                    stream,
                    &mut cancelled,
                    &mut deadline,
                    window,
                    &mut usage,
                )
                .await?
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
            if writer.flush().await? {
                other
            } else {
                Outcome::Lost
            }
        }
    };
    finish(&mut writer, outcome, usage).await
}

/// Reads the provider stream into the writer until it finishes, fails, is cancelled or times
/// out. Dropping the stream on return closes the provider connection.
async fn stream_output(
    writer: &mut Writer<'_>,
    mut stream: crate::llm::provider::EventStream,
    cancelled: &mut tokio::sync::watch::Receiver<bool>,
    deadline: &mut std::pin::Pin<&mut tokio::time::Sleep>,
    window: Duration,
    usage: &mut Option<(i64, i64)>,
) -> anyhow::Result<Outcome> {
    let config = &writer.state.config;
    let heartbeat_every = Duration::from_secs(config.execution_heartbeat_secs);
    let max_output = config.max_output_bytes;
    let mut beat = tokio::time::interval(heartbeat_every);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let flush_at = (!writer.pending.is_empty()).then(|| writer.flush_due(window));
        tokio::select! {
            biased;
            () = crate::state::until_set(cancelled) => return Ok(Outcome::Cancelled),
            () = deadline.as_mut() => return Ok(Outcome::TimedOut),
            // Before the stream, so a fast stream cannot starve the batched writes.
            () = sleep_until_opt(flush_at) => {
                if let Some(outcome) = take_ready(writer, &mut stream, max_output, usage) {
                    return Ok(outcome); // the caller writes the buffer first
                }
                if !writer.flush().await? {
                    return Ok(Outcome::Lost);
                }
            }
            _ = beat.tick() => {
                if !writer.heartbeat(heartbeat_every).await? {
                    return Ok(Outcome::Lost);
                }
            }
            item = stream.next() => match item {
                Some(Ok(StreamEvent::Delta(text))) => {
                    let total = writer.output_len + writer.pending.len() + text.len();
                    if total > max_output {
                        return Ok(output_cap_reached(max_output));
                    }
                    writer.pending.push_str(&text);
                    // After a quiet spell (or with a full buffer) write at once, taking along
                    // what has already arrived: a burst becomes one event, not one plus a batch.
                    if writer.flush_due(window) <= Instant::now() {
                        if let Some(outcome) = take_ready(writer, &mut stream, max_output, usage) {
                            return Ok(outcome); // the caller writes the buffer first
                        }
                        if !writer.flush().await? {
                            return Ok(Outcome::Lost);
                        }
                    }
                }
                Some(Ok(StreamEvent::Usage { input_tokens, output_tokens })) => {
                    *usage = Some((input_tokens, output_tokens));
                }
                Some(Ok(StreamEvent::Finished { .. })) => return Ok(Outcome::Succeeded),
                Some(Err(e)) => return Ok(Outcome::Failed(failure_message(&e))),
                None => return Ok(ended_unfinished()),
            },
        }
    }
}

/// Moves the deltas the provider has already delivered (without waiting) into the buffer, up
/// to a full buffer. Returns how the run ends when one of those items ends it (the caller writes
/// the buffer first: the output before the end is kept).
fn take_ready(
    writer: &mut Writer<'_>,
    stream: &mut crate::llm::provider::EventStream,
    max_output: usize,
    usage: &mut Option<(i64, i64)>,
) -> Option<Outcome> {
    use futures_util::FutureExt;
    while writer.pending.len() < FLUSH_BYTES {
        let item = stream.next().now_or_never()?;
        match item {
            Some(Ok(StreamEvent::Delta(text))) => {
                if writer.output_len + writer.pending.len() + text.len() > max_output {
                    return Some(output_cap_reached(max_output));
                }
                writer.pending.push_str(&text);
            }
            Some(Ok(StreamEvent::Usage {
                input_tokens,
                output_tokens,
            })) => *usage = Some((input_tokens, output_tokens)),
            Some(Ok(StreamEvent::Finished { .. })) => return Some(Outcome::Succeeded),
            Some(Err(e)) => return Some(Outcome::Failed(failure_message(&e))),
            None => return Some(ended_unfinished()),
        }
    }
    None
}

/// The ending of a run whose output would pass `max_output` bytes.
fn output_cap_reached(max_output: usize) -> Outcome {
    Outcome::Failed(format!(
        "the output reached the limit of {max_output} bytes (AGENTRY_MAX_OUTPUT_BYTES): \
         the run was stopped and the output so far kept"
    ))
}

/// The ending of a provider stream that stopped without its finishing event.
fn ended_unfinished() -> Outcome {
    Outcome::Failed("the provider stream ended without finishing".into())
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn failure_message(e: &ProviderError) -> String {
    e.to_string()
}

async fn insert_event(
    conn: &mut AsyncPgConnection,
    execution_id: Uuid,
    sequence: i32,
    kind: EventKind,
    data: serde_json::Value,
    at: DateTime<Utc>,
) -> QueryResult<()> {
    use crate::db::schema::execution_events;
    diesel::insert_into(execution_events::table)
        .values((
            execution_events::execution_id.eq(execution_id),
            execution_events::sequence.eq(sequence),
            execution_events::kind.eq(kind),
            execution_events::data.eq(Some(data)),
            execution_events::at.eq(at),
        ))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Rough token count when a provider reports none: about four characters a token.
fn estimate_tokens(chars: usize) -> i64 {
    i64::try_from(chars.div_ceil(4)).unwrap_or(i64::MAX)
}

/// Ends the run: USAGE and the terminal event, status, tokens and cost, and the key's usage,
/// in one transaction; then publishes the two events.
async fn finish(
    writer: &mut Writer<'_>,
    outcome: Outcome,
    usage: Option<(i64, i64)>,
) -> anyhow::Result<()> {
    let state = writer.state;
    let (final_status, terminal, error) = match outcome {
        Outcome::Lost => {
            // Whoever ended the run wrote its last events: let our watchers have them.
            publish_from_table(state, writer.execution.id, writer.sequence).await;
            return Ok(());
        }
        Outcome::Succeeded => (ExecutionStatus::Succeeded, EventKind::Completed, None),
        Outcome::Failed(message) => (ExecutionStatus::Failed, EventKind::Failed, Some(message)),
        Outcome::Cancelled => (ExecutionStatus::Cancelled, EventKind::Cancelled, None),
        Outcome::TimedOut => (
            ExecutionStatus::TimedOut,
            EventKind::TimedOut,
            Some(format!(
                "the run exceeded {} s",
                state.config.execution_timeout_secs
            )),
        ),
    };
    let execution = &writer.execution;
    let (input_tokens, output_tokens, tokens_estimated) = match usage {
        Some((input, output)) => (input, output, false),
        None => {
            let output_chars = writer.output_len;
            if output_chars == 0 && final_status != ExecutionStatus::Succeeded {
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
    let priced = state
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
        Some(message) => json!({ "status": final_status.as_str(), "error": message }),
        None => json!({ "status": final_status.as_str() }),
    };
    let (id, key_id, user_id) = (execution.id, execution.api_key_id, execution.user_id);
    let at = Utc::now();
    let events = (usage_data.clone(), terminal_data.clone());
    let ended = patient(&state.pool, WRITE_PATIENCE, "ending a run", move |conn| {
        let error = error.clone();
        let (usage_data, terminal_data) = events.clone();
        Box::pin(conn.transaction(async move |conn| {
            let n = diesel::update(executions::table.find(id))
                .filter(executions::status.eq(ExecutionStatus::Running))
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
            insert_event(conn, id, usage_sequence, EventKind::Usage, usage_data, at).await?;
            insert_event(conn, id, terminal_sequence, terminal, terminal_data, at).await?;
            if let Some(key_id) = key_id {
                api_keys::model::mark_used(conn, key_id).await?;
            }
            notify(conn, RUN_CHANNEL, &format!("{id}:{terminal_sequence}")).await?;
            notify(conn, EXECUTION_CHANNEL, &format!("{id}:{user_id}")).await?;
            Ok(true)
        }))
    })
    .await?;
    if !ended {
        publish_from_table(state, id, writer.sequence).await;
        return Ok(());
    }
    for (sequence, kind, data) in [
        (usage_sequence, EventKind::Usage, usage_data),
        (terminal_sequence, terminal, terminal_data),
    ] {
        state.hub.publish(EventRow {
            execution_id: id,
            sequence,
            kind,
            delta: None,
            data: Some(data),
            at,
        });
    }
    let provider = execution.provider.clone();
    metrics::counter!(crate::telemetry::names::RUNS, "status" => final_status.as_str(), "provider" => provider.clone()).increment(1);
    metrics::counter!(crate::telemetry::names::TOKENS, "provider" => provider.clone(), "direction" => "input")
        .increment(u64::try_from(input_tokens).unwrap_or(0));
    metrics::counter!(crate::telemetry::names::TOKENS, "provider" => provider, "direction" => "output")
        .increment(u64::try_from(output_tokens).unwrap_or(0));
    writer.sequence = terminal_sequence;
    tracing::info!(
        execution.id = %id,
        status = final_status.as_str(),
        input_tokens,
        output_tokens,
        cost_micros,
        "run ended"
    );
    Ok(())
}

/// Publishes the run's stored events after `after` (written by someone else: recovery, or an
/// earlier attempt of ours whose answer was lost). Best effort: watchers re-read on their own.
async fn publish_from_table(state: &AppState, id: Uuid, after: i32) {
    let rows = patient(
        &state.pool,
        WRITE_PATIENCE,
        "reading a run's last events",
        move |conn| Box::pin(model::events_after(conn, id, after, 100)),
    )
    .await;
    if let Ok(rows) = rows {
        for row in rows {
            state.hub.publish(row);
        }
    }
}
