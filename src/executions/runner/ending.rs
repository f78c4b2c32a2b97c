//! Ending a run: the USAGE and terminal events, status, tokens and cost, and the key's usage,
//! written in one transaction (only while the run is still RUNNING), then published.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde_json::json;
use uuid::Uuid;

use super::{Outcome, WRITE_PATIENCE, writer::Writer, writer::insert_event};
use crate::{
    api_keys, budgets,
    db::{patient, schema::executions},
    executions::{
        hub::{EXECUTION_CHANNEL, RUN_CHANNEL, notify},
        model::{self, EventKind, EventRow, ExecutionStatus},
    },
    llm::pricing::exact_usd,
    state::AppState,
    webhooks::{self, model::WebhookEvent},
};

/// How a run that is still ours ends: its status, terminal event and error message.
struct Ending {
    status: ExecutionStatus,
    terminal: EventKind,
    error: Option<String>,
    /// The error code of a failure a client may act on (BUDGET_EXCEEDED).
    code: Option<&'static str>,
    /// The provider rejected the run's key.
    key_rejected: bool,
}

impl Ending {
    /// The ending of an outcome; `None` for [`Outcome::Lost`] (someone else ended the run).
    fn of(outcome: Outcome, timeout_secs: u64) -> Option<Self> {
        let mut code = None;
        let mut key_rejected = false;
        let (status, terminal, error) = match outcome {
            Outcome::Lost => return None,
            Outcome::OverBudget(message) => {
                code = Some(crate::error::ErrorCode::BudgetExceeded.as_str());
                (ExecutionStatus::Failed, EventKind::Failed, Some(message))
            }
            Outcome::Succeeded => (ExecutionStatus::Succeeded, EventKind::Completed, None),
            Outcome::KeyRejected(message) => {
                key_rejected = true;
                (ExecutionStatus::Failed, EventKind::Failed, Some(message))
            }
            Outcome::Failed(message) => (ExecutionStatus::Failed, EventKind::Failed, Some(message)),
            Outcome::Cancelled => (ExecutionStatus::Cancelled, EventKind::Cancelled, None),
            Outcome::TimedOut => (
                ExecutionStatus::TimedOut,
                EventKind::TimedOut,
                Some(format!("the run exceeded {timeout_secs} s")),
            ),
        };
        Some(Self {
            status,
            terminal,
            error,
            code,
            key_rejected,
        })
    }

    /// The webhook event of a run ending so.
    fn webhook_event(&self) -> WebhookEvent {
        match self.status {
            ExecutionStatus::Succeeded => WebhookEvent::ExecutionSucceeded,
            ExecutionStatus::Cancelled => WebhookEvent::ExecutionCancelled,
            ExecutionStatus::TimedOut => WebhookEvent::ExecutionTimedOut,
            _ => WebhookEvent::ExecutionFailed,
        }
    }

    /// The terminal event's data.
    fn event_data(&self) -> serde_json::Value {
        match (&self.error, self.code) {
            (Some(message), Some(code)) => {
                json!({ "status": self.status.as_str(), "error": message, "code": code })
            }
            (Some(message), None) => json!({ "status": self.status.as_str(), "error": message }),
            (None, _) => json!({ "status": self.status.as_str() }),
        }
    }
}

/// What a run used and cost.
#[derive(Debug, Clone, Copy)]
struct Accounting {
    input_tokens: i64,
    output_tokens: i64,
    cost_micros: i64,
    /// The tokens were estimated (the provider reported none) or the model has no price.
    cost_estimated: bool,
}

impl Accounting {
    /// The provider's reported usage (`estimated` when some of it was guessed), or an estimate
    /// from the text when it reported none; the cost from the price table.
    fn of(
        writer: &Writer<'_>,
        usage: Option<(i64, i64)>,
        estimated: bool,
        status: ExecutionStatus,
    ) -> Self {
        let execution = &writer.execution;
        let (input_tokens, output_tokens, tokens_estimated) = match usage {
            Some((input, output)) => (input, output, estimated),
            // Nothing was produced: nothing to estimate.
            None if writer.output_len == 0 && status != ExecutionStatus::Succeeded => (0, 0, false),
            None => (
                estimate_tokens(execution.input.len() + 200),
                estimate_tokens(writer.output_len),
                true,
            ),
        };
        let priced =
            writer
                .state
                .pricing
                .cost_micros(&execution.model, input_tokens, output_tokens);
        Self {
            input_tokens,
            output_tokens,
            cost_micros: priced.unwrap_or(0),
            cost_estimated: tokens_estimated
                || (priced.is_none() && input_tokens + output_tokens > 0),
        }
    }

    /// The USAGE event's data.
    fn event_data(&self) -> serde_json::Value {
        json!({
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "costUsd": self.cost_micros as f64 / 1_000_000.0,
            "costEstimated": self.cost_estimated,
        })
    }
}

/// Rough token count when a provider reports none: about four characters a token.
fn estimate_tokens(chars: usize) -> i64 {
    i64::try_from(chars.div_ceil(4)).unwrap_or(i64::MAX)
}

/// Ends the run: USAGE and the terminal event, status, tokens and cost, and the key's usage,
/// in one transaction; then publishes the two events.
pub(super) async fn finish(
    writer: &mut Writer<'_>,
    outcome: Outcome,
    usage: Option<(i64, i64)>,
    usage_estimated: bool,
) -> anyhow::Result<()> {
    let state = writer.state;
    let Some(ending) = Ending::of(outcome, state.config.execution_timeout_secs) else {
        // Whoever ended the run wrote its last events: let our watchers have them.
        publish_from_table(state, writer.execution.id, writer.sequence).await;
        return Ok(());
    };
    let accounting = Accounting::of(writer, usage, usage_estimated, ending.status);
    let execution = &writer.execution;
    let (id, key_id, user_id) = (execution.id, execution.api_key_id, execution.user_id);
    let agent_id = execution.agent_id;
    let month = crate::budgets::model::month_of(Utc::now());
    let usage_sequence = writer.sequence + 1;
    let terminal_sequence = writer.sequence + 2;
    let (status, terminal) = (ending.status, ending.terminal);
    let events = (accounting.event_data(), ending.event_data());
    let hook_event = ending.webhook_event();
    let hook_data = json!({
        "executionId": id,
        "agentId": agent_id,
        "apiKeyId": key_id,
        "status": status.as_str(),
        "error": ending.error,
        "errorCode": ending.code,
        "model": execution.model,
        "provider": execution.provider,
        "inputTokens": accounting.input_tokens,
        "outputTokens": accounting.output_tokens,
        "cost": exact_usd(accounting.cost_micros),
        "costEstimated": accounting.cost_estimated,
        "threadId": execution.thread_id,
        "crewRunId": execution.crew_run_id,
    });
    let rejected = ending.key_rejected.then(|| {
        json!({
            "apiKeyId": key_id,
            "provider": execution.provider,
            "executionId": id,
            "error": ending.error,
        })
    });
    let at = model::event_time();
    let stored = events.clone();
    let ended = patient(&state.pool, WRITE_PATIENCE, "ending a run", move |conn| {
        let error = ending.error.clone();
        let (usage_data, terminal_data) = stored.clone();
        let (hook_data, rejected) = (hook_data.clone(), rejected.clone());
        Box::pin(conn.transaction(async move |conn| {
            let n = diesel::update(executions::table.find(id))
                .filter(executions::status.eq(ExecutionStatus::Running))
                .set((
                    executions::status.eq(status),
                    executions::error.eq(error),
                    executions::input_tokens.eq(accounting.input_tokens),
                    executions::output_tokens.eq(accounting.output_tokens),
                    executions::cost_micros.eq(accounting.cost_micros),
                    executions::cost_estimated.eq(accounting.cost_estimated),
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
            if accounting.cost_micros > 0 {
                let crossed = budgets::service::charge(
                    conn,
                    user_id,
                    key_id,
                    agent_id,
                    accounting.cost_micros,
                    month,
                )
                .await?;
                for crossing in crossed {
                    let (event, data) = budgets::service::alert(&crossing, id);
                    webhooks::service::enqueue(conn, user_id, event, data).await?;
                }
            }
            webhooks::service::enqueue(conn, user_id, hook_event, hook_data).await?;
            if let Some(rejected) = rejected {
                let event = WebhookEvent::ApiKeyRejected;
                webhooks::service::enqueue(conn, user_id, event, rejected).await?;
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
    let (usage_data, terminal_data) = events;
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
    writer.sequence = terminal_sequence;
    record(&execution.provider, status, accounting);
    tracing::info!(
        execution.id = %id,
        status = status.as_str(),
        input_tokens = accounting.input_tokens,
        output_tokens = accounting.output_tokens,
        cost_micros = accounting.cost_micros,
        "run ended"
    );
    Ok(())
}

/// Counts an ended run and its tokens in the metrics.
fn record(provider: &str, status: ExecutionStatus, accounting: Accounting) {
    use crate::telemetry::names::{RUNS, TOKENS};
    let provider = provider.to_owned();
    metrics::counter!(RUNS, "status" => status.as_str(), "provider" => provider.clone())
        .increment(1);
    metrics::counter!(TOKENS, "provider" => provider.clone(), "direction" => "input")
        .increment(u64::try_from(accounting.input_tokens).unwrap_or(0));
    metrics::counter!(TOKENS, "provider" => provider, "direction" => "output")
        .increment(u64::try_from(accounting.output_tokens).unwrap_or(0));
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
