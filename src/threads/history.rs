//! What a run in a thread sends besides its own input: the thread's earlier turns, rebuilt
//! from their runs' event logs (the input, then what the model said and did, round by round:
//! text, tool calls, their results), and trimmed to the model's context window, oldest turns
//! first; the system prompt and the new input always stay.
//!
//! Tokens are counted with OpenAI's own tokenizer (tiktoken-rs: `o200k_base` for the GPT-4o,
//! GPT-4.1, GPT-5 and o-series families, `cl100k_base` for GPT-4 and GPT-3.5) when the key is an
//! OpenAI key; otherwise (Anthropic publishes no tokenizer; Hugging Face and CUSTOM models may
//! be anything) as one token per three bytes, rounded up — more tokens than ordinary English,
//! code or Claude's tokenizer give — and a tenth of every window is kept free on top, so
//! trimming errs on the safe side.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    db::schema::{execution_events, executions},
    executions::model::{EventKind, EventRow},
    llm::{
        ProviderKind,
        provider::{Message, ToolCall},
    },
};

/// Most earlier runs of a thread read back (the newest).
pub const MAX_TURNS: i64 = 100;
/// Tokens counted per message besides its text (role and framing).
const PER_MESSAGE: usize = 4;
/// Tokens kept free for the tool definitions.
const TOOLS_RESERVE: usize = 1000;
/// Output tokens kept free when the agent sets no `maxOutputTokens`.
const DEFAULT_OUTPUT_RESERVE: usize = 1024;

/// How many tokens a text takes for a model.
#[derive(Clone, Copy)]
pub enum Counter {
    /// OpenAI's `o200k_base`.
    O200k,
    /// OpenAI's `cl100k_base`.
    Cl100k,
    /// One token per three bytes, rounded up.
    Bytes,
}

impl Counter {
    /// The counter for `model` on a `provider` key.
    pub fn for_model(provider: ProviderKind, model: &str) -> Self {
        if provider != ProviderKind::OpenAi {
            return Self::Bytes;
        }
        let m = model.to_ascii_lowercase();
        if [
            "gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt",
        ]
        .iter()
        .any(|p| m.starts_with(p))
        {
            Self::O200k
        } else if m.starts_with("gpt-4") || m.starts_with("gpt-3.5") {
            Self::Cl100k
        } else {
            Self::Bytes
        }
    }

    /// Tokens of `text`.
    pub fn count(self, text: &str) -> usize {
        match self {
            Self::O200k => tiktoken_rs::o200k_base_singleton()
                .encode_ordinary(text)
                .len(),
            Self::Cl100k => tiktoken_rs::cl100k_base_singleton()
                .encode_ordinary(text)
                .len(),
            Self::Bytes => text.len().div_ceil(3),
        }
    }
}

/// Agent `config` key: the model's context window in tokens, for models the built-in list does
/// not know (1,000–10,000,000).
pub const CONTEXT_TOKENS: &str = "contextTokens";

/// The agent's `config.contextTokens`, if set.
pub fn context_tokens(config: &Value) -> Option<usize> {
    config
        .get(CONTEXT_TOKENS)
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
}

/// Checks `config.contextTokens`; the error names the key and the rule.
pub fn check_settings(config: &Value) -> Result<(), (String, String)> {
    match config.get(CONTEXT_TOKENS) {
        None => Ok(()),
        Some(n)
            if n.as_u64()
                .is_some_and(|n| (1_000..=10_000_000).contains(&n)) =>
        {
            Ok(())
        }
        Some(_) => Err((
            format!("input.config.{CONTEXT_TOKENS}"),
            "must be a whole number from 1000 to 10000000".into(),
        )),
    }
}

/// The context window of `model` in tokens, when the agent does not set `contextTokens`: the
/// published windows of the common families, else a conservative 32,768.
pub fn window_of(model: &str) -> usize {
    let m = model.to_ascii_lowercase();
    // Input limits (what a request may hold), not total windows: GPT-5's 400k include 128k of
    // output.
    let known: [(&str, usize); 12] = [
        ("gpt-4.1", 1_047_576),
        ("gpt-5", 272_000),
        ("gpt-4o", 128_000),
        ("gpt-4-turbo", 128_000),
        ("o1-mini", 128_000),
        ("o1-preview", 128_000),
        ("o1", 200_000),
        ("o3", 200_000),
        ("o4", 200_000),
        ("claude", 200_000),
        ("gpt-4", 8_192),
        ("gpt-3.5", 16_385),
    ];
    known
        .iter()
        .find(|(prefix, _)| m.starts_with(prefix))
        .map_or(32_768, |&(_, window)| window)
}

/// Bytes of history read per token of the window: no tokenizer packs more than about six
/// bytes of text into a token, so older runs could not fit anyway.
const BYTES_PER_TOKEN_READ: usize = 6;

/// The earlier turns of `thread_id` before the run `before`, oldest first; each turn is one
/// earlier run's messages. Runs that produced nothing are left out. Only the newest runs that
/// could fit a `window` of tokens are read (and at most [`MAX_TURNS`]).
pub async fn earlier_turns(
    conn: &mut AsyncPgConnection,
    thread_id: Uuid,
    before: Uuid,
    window: usize,
) -> QueryResult<Vec<Vec<Message>>> {
    let newest: Vec<(Uuid, String, i32)> = executions::table
        .filter(executions::thread_id.eq(thread_id))
        .filter(executions::id.lt(before))
        .order(executions::id.desc())
        .limit(MAX_TURNS)
        .select((
            executions::id,
            executions::input,
            crate::db::octet_length(executions::output),
        ))
        .load(conn)
        .await?;
    let limit = window.saturating_mul(BYTES_PER_TOKEN_READ);
    let mut read = 0usize;
    let mut runs: Vec<(Uuid, String)> = Vec::new();
    for (id, input, output_len) in newest {
        read += input.len() + usize::try_from(output_len).unwrap_or(0);
        if read > limit && !runs.is_empty() {
            break;
        }
        runs.push((id, input));
    }
    runs.reverse();
    let ids: Vec<Uuid> = runs.iter().map(|(id, _)| *id).collect();
    let events: Vec<EventRow> = execution_events::table
        .filter(execution_events::execution_id.eq_any(&ids))
        .filter(execution_events::kind.eq_any([
            EventKind::OutputDelta,
            EventKind::ToolCall,
            EventKind::ToolResult,
        ]))
        .order((
            execution_events::execution_id.asc(),
            execution_events::sequence.asc(),
        ))
        .select(EventRow::as_select())
        .load(conn)
        .await?;
    let mut by_run: std::collections::HashMap<Uuid, Vec<&EventRow>> = Default::default();
    for event in &events {
        by_run.entry(event.execution_id).or_default().push(event);
    }
    Ok(runs
        .into_iter()
        .filter_map(|(id, input)| {
            let of_run = by_run.remove(&id).unwrap_or_default();
            rebuild(input, of_run.into_iter())
        })
        .collect())
}

/// A turn whose tool calls name a tool the run does not offer, with those rounds told as text:
/// providers refuse tool calls and results sent without the tools' definitions (tools removed
/// from the agent, or a search backend gone).
pub fn without_unoffered_calls(turn: Vec<Message>, offered: &[&str]) -> Vec<Message> {
    let unoffered = turn.iter().any(|m| {
        matches!(m, Message::Assistant { tool_calls, .. }
            if tool_calls.iter().any(|c| !offered.contains(&c.name.as_str())))
    });
    if !unoffered {
        return turn;
    }
    let mut out: Vec<Message> = Vec::new();
    let mut told = String::new();
    for message in turn {
        match message {
            Message::User(text) => out.push(Message::User(text)),
            Message::Assistant { text, tool_calls } => {
                told.push_str(&text);
                for call in tool_calls {
                    told.push_str(&format!("\n[called {} with {}]", call.name, call.arguments));
                }
            }
            Message::ToolResult {
                content, is_error, ..
            } => {
                let what = if is_error { "failed" } else { "answered" };
                told.push_str(&format!("\n[the tool {what}: {content}]"));
            }
        }
    }
    out.push(Message::Assistant {
        text: told.trim().to_owned(),
        tool_calls: Vec::new(),
    });
    out
}

/// One earlier run as messages: its input, then each round's text and calls followed by the
/// calls' results, then its last text. `None` when the model said and did nothing.
fn rebuild<'a>(input: String, events: impl Iterator<Item = &'a EventRow>) -> Option<Vec<Message>> {
    let mut out = vec![Message::User(input)];
    let mut text = String::new();
    let mut calls: Vec<ToolCall> = Vec::new();
    let mut results: Vec<Message> = Vec::new();
    let flush = |out: &mut Vec<Message>,
                 text: &mut String,
                 calls: &mut Vec<ToolCall>,
                 results: &mut Vec<Message>| {
        // A call the run was stopped during has no result: the model is told so.
        for call in calls.iter() {
            let answered = results
                .iter()
                .any(|r| matches!(r, Message::ToolResult { call_id, .. } if *call_id == call.id));
            if !answered {
                results.push(Message::ToolResult {
                    call_id: call.id.clone(),
                    content: "the run was stopped before this tool answered".into(),
                    is_error: true,
                });
            }
        }
        out.push(Message::Assistant {
            text: std::mem::take(text),
            tool_calls: std::mem::take(calls),
        });
        out.append(results);
    };
    for event in events {
        let data = event.data.as_ref().unwrap_or(&Value::Null);
        let field = |name: &str| data[name].as_str().unwrap_or_default().to_owned();
        match event.kind {
            EventKind::OutputDelta => {
                if !calls.is_empty() {
                    flush(&mut out, &mut text, &mut calls, &mut results);
                }
                text.push_str(event.delta.as_deref().unwrap_or_default());
            }
            EventKind::ToolCall => {
                if !results.is_empty() {
                    flush(&mut out, &mut text, &mut calls, &mut results);
                }
                let arguments = match &data["arguments"] {
                    Value::String(raw) => raw.clone(),
                    other => other.to_string(),
                };
                calls.push(ToolCall {
                    id: field("id"),
                    name: field("tool"),
                    arguments,
                });
            }
            EventKind::ToolResult => {
                let (content, is_error) = match data["error"].as_str() {
                    Some(error) => (error.to_owned(), true),
                    None => (field("result"), false),
                };
                results.push(Message::ToolResult {
                    call_id: field("id"),
                    content,
                    is_error,
                });
            }
            _ => {}
        }
    }
    if !calls.is_empty() {
        flush(&mut out, &mut text, &mut calls, &mut results);
    }
    if !text.trim().is_empty() {
        out.push(Message::Assistant {
            text,
            tool_calls: Vec::new(),
        });
    }
    (out.len() > 1).then_some(out)
}

/// Tokens of one message.
fn message_tokens(counter: Counter, message: &Message) -> usize {
    PER_MESSAGE
        + match message {
            Message::User(text) => counter.count(text),
            Message::Assistant { text, tool_calls } => {
                counter.count(text)
                    + tool_calls
                        .iter()
                        .map(|c| counter.count(&c.name) + counter.count(&c.arguments))
                        .sum::<usize>()
            }
            Message::ToolResult { content, .. } => counter.count(content),
        }
}

/// What fits: the newest of `turns` whose tokens, with the system prompt, the new input, the
/// output reserve (`max_output`, or 1,024) and room for tool definitions, stay within
/// `window`. Returns the kept messages, oldest first, and how many turns were dropped.
pub fn fit(
    counter: Counter,
    window: usize,
    max_output: Option<usize>,
    system: &str,
    input: &str,
    turns: Vec<Vec<Message>>,
) -> (Vec<Message>, usize) {
    let fixed = counter.count(system)
        + counter.count(input)
        + 2 * PER_MESSAGE
        + TOOLS_RESERVE
        + max_output.unwrap_or(DEFAULT_OUTPUT_RESERVE);
    // A tenth of the window stays free: counts other than the model's own tokenizer are
    // estimates.
    let mut budget = (window - window / 10).saturating_sub(fixed);
    let mut kept: Vec<Vec<Message>> = Vec::new();
    let total = turns.len();
    for turn in turns.into_iter().rev() {
        let tokens: usize = turn.iter().map(|m| message_tokens(counter, m)).sum();
        if tokens > budget {
            break; // older turns go too: the conversation stays contiguous
        }
        budget -= tokens;
        kept.push(turn);
    }
    let dropped = total - kept.len();
    kept.reverse();
    (kept.into_iter().flatten().collect(), dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(input: &str, answer: &str) -> Vec<Message> {
        vec![
            Message::User(input.into()),
            Message::Assistant {
                text: answer.into(),
                tool_calls: Vec::new(),
            },
        ]
    }

    #[test]
    fn the_oldest_turns_go_first_and_the_rest_stay_contiguous() {
        let turns = vec![
            turn("first question", &"a".repeat(4000)),
            turn("second", "short"),
            turn("third", "short"),
        ];
        // 2,700 of 3,000 usable; fixed part: 1,000 for tools + 1,024 output + a little, leaving
        // ~665; the big first turn (~1,340 tokens by bytes) no longer fits.
        let (kept, dropped) = fit(Counter::Bytes, 3_000, None, "system", "now", turns.clone());
        assert_eq!(dropped, 1);
        assert_eq!(kept.len(), 4);
        assert_eq!(kept[0], Message::User("second".into()));
        let (kept, dropped) = fit(Counter::Bytes, 100_000, None, "system", "now", turns);
        assert_eq!((kept.len(), dropped), (6, 0));
    }

    #[test]
    fn openai_models_are_counted_with_their_tokenizer() {
        assert!(matches!(
            Counter::for_model(ProviderKind::OpenAi, "gpt-4o-mini"),
            Counter::O200k
        ));
        assert!(matches!(
            Counter::for_model(ProviderKind::Anthropic, "claude-sonnet-4"),
            Counter::Bytes
        ));
        // "hello world" is two tokens in o200k_base, four by bytes.
        assert_eq!(Counter::O200k.count("hello world"), 2);
        assert_eq!(Counter::Bytes.count("hello world"), 4);
        assert_eq!(window_of("gpt-4o-mini"), 128_000);
        assert_eq!(window_of("llama3.1:8b"), 32_768);
    }

    #[test]
    fn a_run_is_rebuilt_round_by_round_with_its_tool_calls_and_results() {
        let at = chrono::Utc::now();
        let id = Uuid::now_v7();
        let event =
            |sequence: i32, kind: EventKind, delta: Option<&str>, data: Option<Value>| EventRow {
                execution_id: id,
                sequence,
                kind,
                delta: delta.map(str::to_owned),
                data,
                at,
            };
        let events = [
            event(2, EventKind::OutputDelta, Some("Let me add."), None),
            event(
                3,
                EventKind::ToolCall,
                None,
                Some(
                    serde_json::json!({"id": "c1", "tool": "calculator", "arguments": {"expression": "2+2"}}),
                ),
            ),
            event(
                4,
                EventKind::ToolResult,
                None,
                Some(
                    serde_json::json!({"id": "c1", "tool": "calculator", "result": "4", "error": null}),
                ),
            ),
            event(5, EventKind::OutputDelta, Some("It is 4."), None),
        ];
        let messages = rebuild("add 2 and 2".into(), events.iter()).expect("a turn");
        assert_eq!(messages.len(), 4);
        assert!(
            matches!(&messages[1], Message::Assistant { text, tool_calls } if text == "Let me add." && tool_calls[0].arguments == r#"{"expression":"2+2"}"#)
        );
        assert!(
            matches!(&messages[2], Message::ToolResult { call_id, content, is_error: false } if call_id == "c1" && content == "4")
        );
        assert!(matches!(&messages[3], Message::Assistant { text, .. } if text == "It is 4."));
        assert!(rebuild("nothing came".into(), [].iter()).is_none());

        // Without the calculator on offer, the round is told as text.
        let told = without_unoffered_calls(messages, &["wikipedia_search"]);
        assert_eq!(told.len(), 2);
        assert!(
            matches!(&told[1], Message::Assistant { text, tool_calls } if tool_calls.is_empty()
            && text.contains("[called calculator with {\"expression\":\"2+2\"}]")
            && text.contains("[the tool answered: 4]") && text.ends_with("It is 4."))
        );
    }
}
