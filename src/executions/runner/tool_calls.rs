//! The tool step of a run's conversation: each call is recorded (TOOL_CALL), the calls of one
//! turn run together, each result is recorded as it arrives (TOOL_RESULT: the result or the
//! error, whether it was cut, how long it took), and the results go back to the model in the
//! order of the calls. Cancel and the run's deadline stop the step mid-tool (dropping a tool's
//! future aborts its request); the heartbeat keeps going while tools work.

use std::time::Duration;

use futures_util::{StreamExt, stream::FuturesUnordered};
use serde_json::{Value, json};

use super::{Outcome, Steps};
use crate::{
    executions::model::EventKind,
    llm::provider::{Message, ToolCall},
};

/// A call's arguments for its event: the JSON the model wrote, or its text when malformed.
fn arguments_value(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::String(arguments.to_owned()))
}

impl Steps<'_, '_, '_> {
    /// Records and runs `calls`; the results as messages for the model's next turn, or how the
    /// run ended meanwhile.
    pub(super) async fn use_tools(
        &mut self,
        calls: &[ToolCall],
    ) -> anyhow::Result<Result<Vec<Message>, Outcome>> {
        for call in calls {
            let data = json!({
                "id": call.id,
                "tool": call.name,
                "arguments": arguments_value(&call.arguments),
            });
            if !self.writer.record(EventKind::ToolCall, data).await? {
                return Ok(Err(Outcome::Lost));
            }
        }
        let toolbox = self.toolbox;
        let mut running: FuturesUnordered<_> = calls
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, call)| async move { (i, toolbox.call(call).await) })
            .collect();
        let every = Duration::from_secs(self.writer.state.config.execution_heartbeat_secs);
        let mut beat = tokio::time::interval(every);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut results: Vec<Option<Message>> = vec![None; calls.len()];
        loop {
            tokio::select! {
                biased;
                () = crate::state::until_set(self.cancelled) => return Ok(Err(Outcome::Cancelled)),
                () = self.deadline.as_mut() => return Ok(Err(Outcome::TimedOut)),
                next = running.next() => {
                    let Some((i, done)) = next else { break };
                    let (content, is_error) = match &done.outcome {
                        Ok(text) => (text.clone(), false),
                        Err(error) => (error.clone(), true),
                    };
                    let data = json!({
                        "id": done.call.id,
                        "tool": done.call.name,
                        "result": done.outcome.as_ref().ok(),
                        "error": done.outcome.as_ref().err(),
                        "truncated": done.truncated,
                        "durationMs": u64::try_from(done.duration.as_millis()).unwrap_or(u64::MAX),
                    });
                    if !self.writer.record(EventKind::ToolResult, data).await? {
                        return Ok(Err(Outcome::Lost));
                    }
                    results[i] = Some(Message::ToolResult {
                        call_id: done.call.id,
                        content,
                        is_error,
                    });
                }
                _ = beat.tick() => {
                    if !self.writer.heartbeat(every).await? {
                        return Ok(Err(Outcome::Lost));
                    }
                }
            }
        }
        Ok(Ok(results.into_iter().flatten().collect()))
    }
}
