//! Metering a run against its budgets while it streams: the tokens of the turns already
//! finished (as the provider reported them, or estimated), plus the turn under way (its request
//! estimated, its output counted as it arrives), priced with the pricing table. The runner asks
//! before it takes each delta, so a run is stopped before the delta that would pass a limit.

use crate::{budgets::service::Allowance, llm::pricing::Pricing};

/// A run's budgets and what it has used so far.
pub(super) struct Meter<'a> {
    allowance: Allowance,
    pricing: &'a Pricing,
    model: &'a str,
    /// Input and output tokens of the finished turns.
    done: (i64, i64),
    /// Estimated input tokens of the turn under way.
    turn_input: i64,
    /// Output chunks and bytes of the turn under way.
    turn_chunks: i64,
    turn_bytes: usize,
}

impl<'a> Meter<'a> {
    /// A meter of a run of `model` under `allowance`.
    pub(super) fn new(allowance: Allowance, pricing: &'a Pricing, model: &'a str) -> Self {
        Self {
            allowance,
            pricing,
            model,
            done: (0, 0),
            turn_input: 0,
            turn_chunks: 0,
            turn_bytes: 0,
        }
    }

    /// Starts a turn whose request is about `input_tokens`, after finished turns that used
    /// `done` (input, output) tokens; why it must not be sent, if the request alone passes a
    /// limit.
    pub(super) fn start_turn(&mut self, done: (i64, i64), input_tokens: i64) -> Option<String> {
        self.done = done;
        self.turn_input = input_tokens;
        self.turn_chunks = 0;
        self.turn_bytes = 0;
        self.overrun(0, 0)
    }

    /// Why the run must stop before taking a delta of `bytes` (None: take it and count it).
    /// A streamed chunk is about one token; a large chunk counts four bytes a token.
    pub(super) fn take(&mut self, bytes: usize) -> Option<String> {
        if self.allowance.is_unlimited() {
            return None;
        }
        let reason = self.overrun(1, bytes);
        if reason.is_none() {
            self.turn_chunks += 1;
            self.turn_bytes += bytes;
        }
        reason
    }

    /// Why the run must stop before taking a tool call whose arguments are `bytes` long (None:
    /// take it and count it, four bytes a token).
    pub(super) fn take_call(&mut self, bytes: usize) -> Option<String> {
        if self.allowance.is_unlimited() {
            return None;
        }
        let reason = self.overrun(0, bytes);
        if reason.is_none() {
            self.turn_bytes += bytes;
        }
        reason
    }

    /// The most output tokens the turn about to be sent may ask for (its `max_tokens`), so
    /// the provider itself stops within every cap and what is left of the money; `None` when
    /// no budget limits it.
    pub(super) fn output_room(&self) -> Option<u32> {
        if self.allowance.is_unlimited() {
            return None;
        }
        let input = self.done.0 + self.turn_input;
        let cost = self.pricing.cost_micros(self.model, input, self.done.1);
        let output_pico = self.pricing.price(self.model).map(|p| p.output_pico);
        self.allowance
            .output_room(input + self.done.1, cost, output_pico)
            .map(|room| u32::try_from(room.max(1)).unwrap_or(u32::MAX))
    }

    /// The (input, output) tokens of the turn under way, as metered.
    pub(super) fn turn_usage(&self) -> (i64, i64) {
        let by_bytes = i64::try_from(self.turn_bytes.div_ceil(4)).unwrap_or(i64::MAX);
        (self.turn_input, self.turn_chunks.max(by_bytes))
    }

    /// The overrun, if any, with `chunks` more chunks of `bytes` more bytes in this turn.
    fn overrun(&self, chunks: i64, bytes: usize) -> Option<String> {
        if self.allowance.is_unlimited() {
            return None;
        }
        let by_bytes = i64::try_from((self.turn_bytes + bytes).div_ceil(4)).unwrap_or(i64::MAX);
        let output = self.done.1 + (self.turn_chunks + chunks).max(by_bytes);
        let input = self.done.0 + self.turn_input;
        let cost = self.pricing.cost_micros(self.model, input, output);
        self.allowance.overrun(input.saturating_add(output), cost)
    }
}
