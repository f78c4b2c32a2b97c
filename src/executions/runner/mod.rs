//! The runner: one task per run. It opens the provider stream, appends events (no gaps),
//! keeps the assembled output, and ends the run with usage, cost and exactly one terminal
//! event. An agent with tools runs a tool loop: while the model answers a turn with tool
//! calls, the runner records them (TOOL_CALL), runs them (`tool_calls`), records their results
//! (TOOL_RESULT), and asks the model again with the results, up to the step limit. Cancellation and the per-run timeout drop the provider stream, which aborts the
//! upstream request: no more tokens are paid for.
//!
//! Three rules shape it:
//! - **No connection is held while waiting.** Every write borrows a pooled connection for one
//!   statement or one short transaction and gives it back, so slow providers cannot drain the
//!   pool; a busy or restarting database delays a write ([`crate::db::patient`]), it does not end the run.
//! - **Adaptive batching.** A delta after a quiet spell is written at once (one token reaches
//!   watchers within milliseconds), together with whatever the provider has already delivered
//!   (a burst is one event); while tokens keep coming, they are coalesced into one write per
//!   `AGENTRY_STREAM_FLUSH_MS`, so the database work and the messages per watcher stay flat
//!   under load; and while this server's watchers have not all taken the last event, the next
//!   waits for them (200 ms at most), so back-pressure makes events larger, not queues longer.
//! - **The table first, then the feed.** Each event is published to the in-process hub right
//!   after the commit that stored it; other processes learn of it by NOTIFY.
//!
//! Every write is conditional on the run still being RUNNING, so a run that recovery declared
//! dead (or that ended otherwise) is never written to again.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures_util::StreamExt;
use tokio::time::{Instant, Sleep};

use crate::{
    agents::{model::AgentRow, service::system_prompt},
    api_keys::{model::ApiKeyRow, service::reveal},
    budgets::service::Allowance,
    executions::model::ExecutionRow,
    llm::{
        ProviderKind, for_kind,
        provider::{
            ChatRequest, EventStream, Limits, Message, ProviderError, StreamEvent, ToolCall,
            open_with_retries,
        },
    },
    state::AppState,
    threads,
    tools::{Extension, Toolbox},
};

mod ending;
mod meter;
mod tool_calls;
mod writer;

use ending::finish;
use meter::Meter;
use writer::Writer;

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
    /// A budget stopped the run (FAILED, with BUDGET_EXCEEDED in its terminal event).
    OverBudget(String),
    /// The provider rejected the run's key (FAILED; the `api_key.rejected` webhook goes out).
    KeyRejected(String),
    /// Someone else ended the run (recovery): write nothing more.
    Lost,
}

/// Starts the runner task for a freshly created run, with the functions of `extension` offered
/// besides the agent's tools, metered against `allowance` (the budgets covering it as they
/// stood when it was admitted); the task ends once the run has ended (or was abandoned to
/// recovery).
pub fn spawn(
    state: AppState,
    execution: ExecutionRow,
    agent: AgentRow,
    key: ApiKeyRow,
    extension: Option<Arc<dyn Extension>>,
    allowance: Allowance,
) -> tokio::task::JoinHandle<()> {
    // A run is its own trace (it outlives the request that started it).
    let span = tracing::info_span!(
        parent: None,
        "execution.run",
        execution.id = %execution.id,
        agent.id = %agent.id,
        trace_id = tracing::field::Empty,
    );
    if let Some(trace_id) = crate::telemetry::trace_id(&span) {
        span.record("trace_id", trace_id);
    }
    let task = async move {
        let id = execution.id;
        if let Err(e) = run(&state, execution, agent, key, extension, allowance).await {
            // The run could not be ended cleanly; recovery will end it when its heartbeat stops.
            tracing::error!(execution.id = %id, error = ?e, "runner failed");
        }
        state.hub.unregister_runner(id);
    };
    tokio::spawn(tracing::Instrument::instrument(task, span))
}

/// Runs one run from QUEUED to its terminal event.
async fn run(
    state: &AppState,
    execution: ExecutionRow,
    agent: AgentRow,
    key: ApiKeyRow,
    extension: Option<Arc<dyn Extension>>,
    allowance: Allowance,
) -> anyhow::Result<()> {
    let mut cancelled = state.hub.register_runner(execution.id);
    let Some(cancel_requested) = writer::start(state, &execution).await? else {
        return Ok(()); // ended by someone else before it started
    };
    let mut writer = Writer::new(state, execution.clone());
    // What the run needs before its first turn; a failure here ends it FAILED at once (it is
    // already RUNNING, and would otherwise wait for recovery and block its thread meanwhile).
    let prepared = async {
        let toolbox = Toolbox::for_run(state, &agent, execution.id, extension)
            .await
            .map_err(|e| anyhow::anyhow!(e.message()))?;
        let system = system_prompt(&agent);
        let messages = conversation(state, &agent, &key, &execution, &system, &toolbox).await?;
        anyhow::Ok((toolbox, system, messages))
    };
    let (toolbox, system, messages) = match prepared.await {
        Ok(prepared) => prepared,
        Err(e) => {
            tracing::error!(execution.id = %execution.id, error = ?e, "could not prepare the run");
            let outcome = Outcome::Failed("the run could not be prepared: try again".into());
            return finish(&mut writer, outcome, None, false).await;
        }
    };
    let mut request = ChatRequest {
        model: agent.model.clone(),
        system,
        messages,
        tools: toolbox.specs().to_vec(),
        temperature: agent.temperature,
        max_output_tokens: agent.max_output_tokens.and_then(|n| u32::try_from(n).ok()),
    };
    let deadline = tokio::time::sleep(Duration::from_secs(state.config.execution_timeout_secs));
    tokio::pin!(deadline);
    let mut usage: Option<(i64, i64)> = None;
    let mut usage_estimated = false;
    let mut meter = Meter::new(allowance, &state.pricing, &execution.model);

    let outcome = if cancel_requested || *cancelled.borrow() {
        Outcome::Cancelled
    } else {
        let mut run = Steps {
            writer: &mut writer,
            key: &key,
            toolbox: &toolbox,
            cancelled: &mut cancelled,
            deadline: &mut deadline,
            usage: &mut usage,
            usage_estimated: &mut usage_estimated,
            meter: &mut meter,
        };
        run.converse(&mut request).await?
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
    finish(&mut writer, outcome, usage, usage_estimated).await
}

/// What one model turn produced besides the output it streamed.
#[derive(Default)]
struct Turn {
    /// Whether to keep the turn's text (a tool loop sends it back to the model).
    keep_text: bool,
    /// The turn's text, when kept.
    text: String,
    /// The tools the model called, in order.
    calls: Vec<ToolCall>,
    /// The tokens the provider reported for the turn.
    usage: Option<(i64, i64)>,
    /// Why the model stopped, if it said.
    stop_reason: Option<String>,
}

/// A run under way: what every step of its conversation needs.
struct Steps<'r, 'a, 'd> {
    writer: &'r mut Writer<'a>,
    key: &'r ApiKeyRow,
    toolbox: &'r Toolbox,
    cancelled: &'r mut tokio::sync::watch::Receiver<bool>,
    deadline: &'r mut Pin<&'d mut Sleep>,
    /// Tokens summed over the turns (reported, or estimated for a tool loop's turn without a
    /// report).
    usage: &'r mut Option<(i64, i64)>,
    /// Whether some turn's tokens were estimated.
    usage_estimated: &'r mut bool,
    /// The run's budgets and what it has used.
    meter: &'r mut Meter<'a>,
}

impl Steps<'_, '_, '_> {
    /// Streams model turns until one answers without calling a tool (or the run ends
    /// otherwise), running the tools of each turn in between; at most the toolbox's step limit
    /// of rounds of tool calls.
    async fn converse(&mut self, request: &mut ChatRequest) -> anyhow::Result<Outcome> {
        let window = Duration::from_millis(self.writer.state.config.stream_flush_ms);
        let mut round = 1;
        let agent_max = request.max_output_tokens;
        loop {
            let request_tokens = estimate_turn(request, &Turn::default()).0;
            if let Some(reason) = self
                .meter
                .start_turn(self.usage.unwrap_or_default(), request_tokens)
            {
                return Ok(Outcome::OverBudget(reason));
            }
            // The provider stops within the budgets by itself: no output past them is billed.
            request.max_output_tokens = match self.meter.output_room() {
                Some(room) => Some(agent_max.map_or(room, |max| max.min(room))),
                None => agent_max,
            };
            let stream = match open_stream(
                self.writer,
                self.key,
                request,
                self.cancelled,
                self.deadline,
            )
            .await?
            {
                Err(outcome) => return Ok(outcome),
                Ok(stream) => stream,
            };
            let mut turn = Turn {
                keep_text: !self.toolbox.is_empty(),
                ..Turn::default()
            };
            let outcome = stream_output(
                self.writer,
                stream,
                self.cancelled,
                self.deadline,
                window,
                &mut turn,
                self.meter,
            )
            .await?;
            let counted = match turn.usage {
                Some(reported) => Some(reported),
                // Stopped by a budget: what the meter counted is what the run is charged.
                None if matches!(outcome, Outcome::OverBudget(_)) => {
                    *self.usage_estimated = true;
                    Some(self.meter.turn_usage())
                }
                // A tool loop's turn without a usage report still cost tokens: about four
                // characters a token of what was sent and received, and the cost says estimated.
                // (A plain run without one, outside a thread, is estimated at its end.)
                None if round > 1 || !turn.calls.is_empty() || request.messages.len() > 1 => {
                    *self.usage_estimated = true;
                    Some(estimate_turn(request, &turn))
                }
                None => None,
            };
            if let Some((input, output)) = counted {
                let (i, o) = self.usage.unwrap_or_default();
                *self.usage = Some((i + input, o + output));
            }
            // A model that calls tools it was not offered (none) has simply finished.
            if !matches!(outcome, Outcome::Succeeded)
                || turn.calls.is_empty()
                || self.toolbox.is_empty()
            {
                return Ok(outcome);
            }
            // Calls cut by the output token limit carry half-written arguments: not run.
            if matches!(turn.stop_reason.as_deref(), Some("length" | "max_tokens")) {
                return Ok(Outcome::Failed(
                    "the model reached its output token limit in the middle of a tool call: \
                     raise the agent's maxOutputTokens"
                        .into(),
                ));
            }
            let max_steps = self.toolbox.max_steps();
            if round > max_steps {
                return Ok(Outcome::Failed(format!(
                    "the agent was still calling tools after {max_steps} steps, its limit \
                     (AGENTRY_TOOL_MAX_STEPS, or the agent's config.maxToolSteps)"
                )));
            }
            if !self.writer.flush().await? {
                return Ok(Outcome::Lost);
            }
            let results = match self.use_tools(&turn.calls).await? {
                Ok(results) => results,
                Err(outcome) => return Ok(outcome),
            };
            request.messages.push(Message::Assistant {
                text: turn.text,
                tool_calls: turn.calls,
            });
            request.messages.extend(results);
            round += 1;
        }
    }
}

/// The messages of a run: the new input, after the thread's earlier turns (trimmed to the
/// model's context window) when the run is in a thread.
async fn conversation(
    state: &AppState,
    agent: &AgentRow,
    key: &ApiKeyRow,
    execution: &ExecutionRow,
    system: &str,
    toolbox: &Toolbox,
) -> anyhow::Result<Vec<Message>> {
    let input = Message::User(execution.input.clone());
    let Some(thread_id) = execution.thread_id else {
        return Ok(vec![input]);
    };
    let provider = ProviderKind::from_stored(&key.provider).unwrap_or(ProviderKind::Custom);
    let counter = threads::history::Counter::for_model(provider, &agent.model);
    let window = threads::history::context_tokens(&agent.config)
        .unwrap_or_else(|| threads::history::window_of(&agent.model));
    let turns = {
        let mut conn = state.pool.get().await?;
        threads::history::earlier_turns(&mut conn, thread_id, execution.id, window).await?
    };
    // Calls of tools the run does not offer now go back as text (providers refuse tool
    // calls and results without the tools' definitions).
    let offered: Vec<&'static str> = toolbox.specs().iter().map(|s| s.name).collect();
    let turns = turns
        .into_iter()
        .map(|turn| threads::history::without_unoffered_calls(turn, &offered))
        .collect();
    let max_output = agent
        .max_output_tokens
        .and_then(|n| usize::try_from(n).ok());
    let (system, text) = (system.to_owned(), execution.input.clone());
    // Counting tokens of a long history is CPU work: off the runtime's workers.
    let (mut messages, dropped) = tokio::task::spawn_blocking(move || {
        threads::history::fit(counter, window, max_output, &system, &text, turns)
    })
    .await?;
    if dropped > 0 {
        tracing::debug!(execution.id = %execution.id, dropped, window, "older thread turns left out to fit the context window");
    }
    messages.push(input);
    Ok(messages)
}

/// Estimated (input, output) tokens of a turn the provider reported no usage for.
fn estimate_turn(request: &ChatRequest, turn: &Turn) -> (i64, i64) {
    let sent: usize = request.system.len()
        + request
            .messages
            .iter()
            .map(|m| match m {
                Message::User(text) => text.len(),
                Message::Assistant { text, tool_calls } => {
                    text.len() + tool_calls.iter().map(|c| c.arguments.len()).sum::<usize>()
                }
                Message::ToolResult { content, .. } => content.len(),
            })
            .sum::<usize>();
    let received = turn.text.len() + turn.calls.iter().map(|c| c.arguments.len()).sum::<usize>();
    let tokens = |chars: usize| i64::try_from(chars.div_ceil(4)).unwrap_or(i64::MAX);
    (tokens(sent + 200), tokens(received))
}

/// Opens the provider stream with the run's key (retrying as configured, the heartbeat kept
/// going meanwhile); the run's ending instead when the endpoint is refused, the provider
/// fails, or the run is cancelled, times out or is lost first.
async fn open_stream(
    writer: &mut Writer<'_>,
    key: &ApiKeyRow,
    request: &ChatRequest,
    cancelled: &mut tokio::sync::watch::Receiver<bool>,
    deadline: &mut Pin<&mut Sleep>,
) -> anyhow::Result<Result<EventStream, Outcome>> {
    let state = writer.state;
    let config = &state.config;
    let provider_kind = ProviderKind::from_stored(&key.provider)
        .ok_or_else(|| anyhow::anyhow!("unknown provider {}", key.provider))?;
    let secret = reveal(&state.vault, key).map_err(|e| anyhow::anyhow!(e.message()))?;
    let base_url = provider_kind
        .base_url(config, key.endpoint.as_deref())
        .to_owned();
    if let Err(refused) = state.egress.check_url(&base_url) {
        return Ok(Err(Outcome::Failed(refused)));
    }
    let Some(provider) = for_kind(
        provider_kind,
        state.http.clone(),
        base_url,
        secret,
        Limits::from_config(config),
    ) else {
        return Ok(Err(Outcome::Failed(format!(
            "the agent's key is a {} search key, not a model's: choose an LLM key for the agent",
            provider_kind.as_str()
        ))));
    };
    let opening = open_with_retries(
        provider.as_ref(),
        request,
        config.provider_max_attempts,
        Duration::from_millis(config.provider_retry_base_ms),
    );
    let opening_started = Instant::now();
    let opening = tracing::Instrument::instrument(
        opening,
        tracing::info_span!(
            "llm.request",
            otel.kind = "client",
            gen_ai.system = provider_kind.as_str(),
            gen_ai.request.model = %request.model,
        ),
    );
    tokio::pin!(opening);
    // Retries may take a while: keep the heartbeat going meanwhile.
    let mut beat = tokio::time::interval(Duration::from_secs(config.execution_heartbeat_secs));
    let opened = loop {
        tokio::select! {
            opened = &mut opening => break opened.map_err(|e| match e {
                ProviderError::Rejected(_) => Outcome::KeyRejected(failure_message(&e)),
                other => Outcome::Failed(failure_message(&other)),
            }),
            () = crate::state::until_set(cancelled) => break Err(Outcome::Cancelled),
            () = deadline.as_mut() => break Err(Outcome::TimedOut),
            _ = beat.tick() => {
                if !writer.heartbeat(Duration::ZERO).await? {
                    break Err(Outcome::Lost);
                }
            }
        }
    };
    metrics::histogram!(crate::telemetry::names::PROVIDER_LATENCY, "provider" => provider_kind.as_str())
        .record(opening_started.elapsed().as_secs_f64());
    Ok(opened)
}

/// Reads the provider stream into the writer until it finishes, fails, is cancelled or times
/// out. Dropping the stream on return closes the provider connection.
async fn stream_output(
    writer: &mut Writer<'_>,
    mut stream: EventStream,
    cancelled: &mut tokio::sync::watch::Receiver<bool>,
    deadline: &mut Pin<&mut Sleep>,
    window: Duration,
    turn: &mut Turn,
    meter: &mut Meter<'_>,
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
            () = crate::state::sleep_until_opt(flush_at) => {
                if writer.flush_due(window) > Instant::now() {
                    continue; // held back by watchers that have not taken the last event
                }
                if let Some(outcome) = take_ready(writer, &mut stream, max_output, turn, meter) {
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
                    if let Some(reason) = meter.take(text.len()) {
                        return Ok(Outcome::OverBudget(reason));
                    }
                    writer.pending.push_str(&text);
                    if turn.keep_text {
                        turn.text.push_str(&text);
                    }
                    // After a quiet spell (or with a full buffer) write at once, taking along
                    // what has already arrived: a burst becomes one event, not one plus a batch.
                    if writer.flush_due(window) <= Instant::now() {
                        if let Some(outcome) = take_ready(writer, &mut stream, max_output, turn, meter) {
                            return Ok(outcome); // the caller writes the buffer first
                        }
                        if !writer.flush().await? {
                            return Ok(Outcome::Lost);
                        }
                    }
                }
                Some(Ok(StreamEvent::Usage { input_tokens, output_tokens })) => {
                    turn.usage = Some((input_tokens, output_tokens));
                }
                Some(Ok(StreamEvent::ToolCall(call))) => {
                    if let Some(reason) = meter.take_call(call.arguments.len()) {
                        return Ok(Outcome::OverBudget(reason));
                    }
                    turn.calls.push(call);
                }
                Some(Ok(StreamEvent::Finished { stop_reason })) => {
                    turn.stop_reason = stop_reason;
                    return Ok(Outcome::Succeeded);
                }
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
    stream: &mut EventStream,
    max_output: usize,
    turn: &mut Turn,
    meter: &mut Meter<'_>,
) -> Option<Outcome> {
    use futures_util::FutureExt;
    while writer.pending.len() < FLUSH_BYTES {
        let item = stream.next().now_or_never()?;
        match item {
            Some(Ok(StreamEvent::Delta(text))) => {
                if writer.output_len + writer.pending.len() + text.len() > max_output {
                    return Some(output_cap_reached(max_output));
                }
                if let Some(reason) = meter.take(text.len()) {
                    return Some(Outcome::OverBudget(reason));
                }
                writer.pending.push_str(&text);
                if turn.keep_text {
                    turn.text.push_str(&text);
                }
            }
            Some(Ok(StreamEvent::Usage {
                input_tokens,
                output_tokens,
            })) => turn.usage = Some((input_tokens, output_tokens)),
            Some(Ok(StreamEvent::ToolCall(call))) => {
                if let Some(reason) = meter.take_call(call.arguments.len()) {
                    return Some(Outcome::OverBudget(reason));
                }
                turn.calls.push(call);
            }
            Some(Ok(StreamEvent::Finished { stop_reason })) => {
                turn.stop_reason = stop_reason;
                return Some(Outcome::Succeeded);
            }
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

fn failure_message(e: &ProviderError) -> String {
    e.to_string()
}
