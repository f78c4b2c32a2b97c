//! Agent tools: what an agent given `tools` may call during a run, through its provider's
//! native function calling (the runner's tool loop in `executions::runner`).
//!
//! A tool ([`AgentTool`], what users tick) offers the model one or more functions
//! ([`ToolSpec`]): `web_search`, `wikipedia_search` / `wikipedia_page`, `calculator`,
//! `http_get`, `list_files` / `read_file` / `write_file`. A run's [`Toolbox`] holds the functions of the agent's tools that this server
//! can run, calls them with a time limit, and bounds what goes back to the model. A tool that
//! fails answers the model with the error (it may try something else); it never ends the run.
//!
//! `http_get`, whose URL the model chooses, goes through the egress-checked HTTP client (no
//! redirects, no internal addresses unless the operator allowed them), the same as provider
//! calls; the search and Wikipedia backends are the operator's, reached without redirects.

pub mod calculator;
pub mod files;
pub mod graphql;
pub mod http_get;
pub mod web_search;
pub mod wikipedia;

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{
    agents::model::AgentRow,
    config::Config,
    llm::provider::{ToolCall, ToolSpec},
    state::AppState,
};

crate::text_enum! {
    /// Tools an agent can be given.
    pub enum AgentTool {
        /// Search the web (`web_search`) through the operator's SearXNG instance.
        WebSearch => "WEB_SEARCH",
        /// Search Wikipedia and read its articles (`wikipedia_search`, `wikipedia_page`).
        Wikipedia => "WIKIPEDIA",
        /// Evaluate arithmetic exactly (`calculator`).
        Calculator => "CALCULATOR",
        /// Read a public web page or API as text (`http_get`).
        HttpRequest => "HTTP_REQUEST",
        /// The user's file workspace (`list_files`, `read_file`, `write_file`).
        Files => "FILES",
    }
}

impl AgentTool {
    /// Every tool, in the order they are listed.
    pub const ALL: [Self; 5] = [
        Self::WebSearch,
        Self::Wikipedia,
        Self::Calculator,
        Self::HttpRequest,
        Self::Files,
    ];

    /// Why this server cannot run the tool for a user (`has_search_key`: whether they hold an
    /// active BRAVE or TAVILY key), if it cannot.
    pub fn unavailable(self, config: &Config, has_search_key: bool) -> Option<&'static str> {
        match self {
            Self::WebSearch if config.searxng_url.is_none() && !has_search_key => Some(
                "no search backend: add a BRAVE or TAVILY key (createApiKey), or the operator \
                 sets AGENTRY_SEARXNG_URL",
            ),
            _ => None,
        }
    }

    /// The functions the tool offers the model.
    pub fn specs(self) -> Vec<ToolSpec> {
        match self {
            Self::WebSearch => vec![web_search::spec()],
            Self::Wikipedia => vec![wikipedia::search_spec(), wikipedia::page_spec()],
            Self::Calculator => vec![calculator::spec()],
            Self::HttpRequest => vec![http_get::spec()],
            Self::Files => vec![files::list_spec(), files::read_spec(), files::write_spec()],
        }
    }
}

/// Agent `config` keys the tools read.
pub mod settings {
    /// `config.maxToolSteps`: most model turns of the tool loop (at most the server's).
    pub const MAX_STEPS: &str = "maxToolSteps";
    /// `config.wikipediaLanguage`: the Wikipedia edition (`en`, `de`, `pt-br` …).
    pub const WIKIPEDIA_LANGUAGE: &str = "wikipediaLanguage";
}

/// Checks the tool settings of an agent's `config`; the error names the key and the rule.
pub fn check_settings(config: &Value) -> Result<(), (String, String)> {
    if let Some(steps) = config.get(settings::MAX_STEPS) {
        match steps.as_u64() {
            Some(1..=64) => {}
            _ => {
                return Err((
                    format!("input.config.{}", settings::MAX_STEPS),
                    "must be a whole number from 1 to 64".into(),
                ));
            }
        }
    }
    if let Some(language) = config.get(settings::WIKIPEDIA_LANGUAGE) {
        let ok = language.as_str().is_some_and(|l| {
            (2..=12).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        });
        if !ok {
            return Err((
                format!("input.config.{}", settings::WIKIPEDIA_LANGUAGE),
                "must be a Wikipedia language code such as `en` or `pt-br`".into(),
            ));
        }
    }
    Ok(())
}

/// Whether `code` looks like a Wikipedia language code (`en`, `pt-br`, `zh-min-nan`).
fn is_language(code: &str) -> bool {
    (2..=12).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
}

/// What a tool call produced: its text for the model, or an error it is told about.
pub type Outcome = Result<String, String>;

/// One finished tool call, as the TOOL_RESULT event and the model see it.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The call.
    pub call: ToolCall,
    /// Its result (bounded), or the error.
    pub outcome: Outcome,
    /// Whether the result was cut at the bound.
    pub truncated: bool,
    /// How long it took.
    pub duration: Duration,
}

/// Functions a run is given besides its agent's tools, by whoever started it (a crew manager's
/// delegation, see `crews`). They run without the tool time limit: what they start has limits
/// of its own (a delegated run has the run timeout), and the run's own deadline still applies.
#[async_trait::async_trait]
pub trait Extension: Send + Sync {
    /// The functions offered to the model.
    fn specs(&self) -> Vec<ToolSpec>;
    /// Runs a call of function `name` with its parsed `arguments` (a JSON object).
    async fn call(&self, name: &str, arguments: &Value) -> Outcome;
}

/// The tools one run may call.
pub struct Toolbox {
    /// The functions offered to the model (of the agent's tools this run can use).
    specs: Vec<ToolSpec>,
    /// Where `web_search` goes (with WEB_SEARCH only).
    search: Option<web_search::Backend>,
    /// For the search APIs of the user's keys: the egress-checked client of provider calls.
    api_http: reqwest::Client,
    /// For URLs the model chooses (`http_get`): the client checked by the tools' egress policy.
    http: reqwest::Client,
    /// For the operator's backends (SearXNG, MediaWiki).
    operator_http: reqwest::Client,
    egress: std::sync::Arc<crate::egress::Egress>,
    config: std::sync::Arc<Config>,
    pool: crate::db::Pool,
    /// The run's owner (whose files the FILES tool sees) and the run.
    user_id: uuid::Uuid,
    execution_id: uuid::Uuid,
    /// Files this run has written (bounded by [`files::MAX_WRITES_PER_RUN`]); held while one is
    /// written.
    writes: tokio::sync::Mutex<usize>,
    wikipedia_language: String,
    max_steps: u32,
    /// Functions the run's starter added, and their names.
    extension: Option<(std::sync::Arc<dyn Extension>, Vec<&'static str>)>,
}

impl Toolbox {
    /// The tools of `agent` that this server can run, with the agent's settings, for its run
    /// `execution_id`, plus the functions of `extension`. With WEB_SEARCH, the owner's search
    /// key is looked up (one query).
    pub async fn for_run(
        state: &AppState,
        agent: &AgentRow,
        execution_id: uuid::Uuid,
        extension: Option<std::sync::Arc<dyn Extension>>,
    ) -> crate::error::AppResult<Self> {
        let config = state.config.clone();
        let listed: Vec<AgentTool> = agent
            .tools
            .iter()
            .flatten()
            .filter_map(|name| AgentTool::from_name(name))
            .collect();
        let search = if listed.contains(&AgentTool::WebSearch) {
            use crate::llm::ProviderKind;
            match crate::api_keys::service::search_key(state, agent.user_id).await? {
                Some((kind, key)) => {
                    let base = kind.base_url(&config, None).to_owned();
                    Some(match kind {
                        ProviderKind::Tavily => web_search::Backend::Tavily { base, key },
                        _ => web_search::Backend::Brave { base, key },
                    })
                }
                None => config.searxng_url.clone().map(web_search::Backend::Searxng),
            }
        } else {
            None
        };
        let mut specs: Vec<ToolSpec> = listed
            .into_iter()
            .filter(|tool| *tool != AgentTool::WebSearch || search.is_some())
            .flat_map(AgentTool::specs)
            .collect();
        let extension = extension.map(|extension| {
            let added = extension.specs();
            let names = added.iter().map(|spec| spec.name).collect();
            specs.extend(added);
            (extension, names)
        });
        let setting = |key: &str| agent.config.get(key);
        let max_steps = setting(settings::MAX_STEPS)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .map_or(config.tool_max_steps, |n| n.clamp(1, config.tool_max_steps));
        // Checked again here: configs saved before the rule existed may hold anything, and the
        // value becomes part of a URL.
        let wikipedia_language = setting(settings::WIKIPEDIA_LANGUAGE)
            .and_then(Value::as_str)
            .filter(|l| is_language(l))
            .unwrap_or("en")
            .to_owned();
        Ok(Self {
            specs,
            search,
            api_http: state.http.clone(),
            http: state.tool_http.clone(),
            operator_http: state.operator_http.clone(),
            egress: state.tool_egress.clone(),
            config,
            pool: state.pool.clone(),
            user_id: agent.user_id,
            execution_id,
            writes: tokio::sync::Mutex::new(0),
            wikipedia_language,
            max_steps,
            extension,
        })
    }

    /// Whether the run has no tools (a plain completion).
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// Most model turns of the run's tool loop.
    pub fn max_steps(&self) -> u32 {
        self.max_steps
    }

    /// The functions offered to the model.
    pub fn specs(&self) -> &[ToolSpec] {
        &self.specs
    }

    /// Runs one call within the tool time limit (an extension's without it); the result is
    /// cut at the configured bound.
    pub async fn call(&self, call: ToolCall) -> Finished {
        let started = Instant::now();
        let limit = Duration::from_secs(self.config.tool_timeout_secs);
        let extended = self
            .extension
            .as_ref()
            .is_some_and(|(_, names)| names.contains(&call.name.as_str()));
        let outcome = if extended {
            self.dispatch(&call).await
        } else {
            match tokio::time::timeout(limit, self.dispatch(&call)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!(
                    "the tool did not answer within {} s",
                    limit.as_secs()
                )),
            }
        };
        let max = self.config.tool_result_max_bytes;
        let (outcome, truncated) = match outcome {
            Ok(text) => (Ok(cut(&text, max)), text.len() > max),
            Err(error) => (Err(cut(&error, max)), error.len() > max),
        };
        Finished {
            call,
            outcome,
            truncated,
            duration: started.elapsed(),
        }
    }

    /// Calls the function `call` names, if the run has it.
    async fn dispatch(&self, call: &ToolCall) -> Outcome {
        let offered = self
            .specs
            .iter()
            .any(|spec| spec.name == call.name.as_str());
        if !offered {
            return Err(format!(
                "there is no tool named `{}`; the tools are: {}",
                call.name,
                self.specs
                    .iter()
                    .map(|s| s.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        // A call without arguments may come as an empty string.
        let raw = Some(call.arguments.trim())
            .filter(|a| !a.is_empty())
            .unwrap_or("{}");
        let arguments: Value = serde_json::from_str(raw)
            .map_err(|e| format!("the arguments are not valid JSON ({e}): send one JSON object"))?;
        if let Some((extension, names)) = &self.extension
            && names.contains(&call.name.as_str())
        {
            return extension.call(&call.name, &arguments).await;
        }
        let text = |name: &str| -> Result<String, String> {
            arguments
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("the argument `{name}` (a string) is missing"))
        };
        match call.name.as_str() {
            "calculator" => calculator::evaluate_apart(text("expression")?).await,
            "web_search" => match &self.search {
                Some(backend) => {
                    let query = text("query")?;
                    web_search::search(backend, &self.api_http, &self.operator_http, &query).await
                }
                None => Err("web search is not configured for this run".into()),
            },
            "wikipedia_search" => {
                wikipedia::search(&self.operator_http, &self.wikipedia_base(), &text("query")?)
                    .await
            }
            "wikipedia_page" => {
                wikipedia::page(&self.operator_http, &self.wikipedia_base(), &text("title")?).await
            }
            "http_get" => {
                let any_port = !self.config.is_production();
                http_get::get(&self.http, &self.egress, any_port, &text("url")?).await
            }
            "list_files" => files::list(&self.pool, self.user_id).await,
            "read_file" => files::read(&self.pool, self.user_id, &text("name")?).await,
            "write_file" => {
                let (name, content) = (text("name")?, text("content")?);
                // One write at a time per run: each holds a pooled connection while it waits
                // for the user's upload lock, so a turn of many writes must not take the pool.
                let mut written = self.writes.lock().await;
                if *written >= files::MAX_WRITES_PER_RUN {
                    return Err(format!(
                        "a run may write at most {} files",
                        files::MAX_WRITES_PER_RUN
                    ));
                }
                *written += 1;
                let (pool, config) = (&self.pool, &self.config);
                files::write(
                    pool,
                    config,
                    self.user_id,
                    self.execution_id,
                    &name,
                    &content,
                )
                .await
            }
            other => Err(format!("there is no tool named `{other}`")),
        }
    }

    /// The MediaWiki API of the agent's Wikipedia edition.
    fn wikipedia_base(&self) -> String {
        self.config
            .wikipedia_url
            .replace("{lang}", &self.wikipedia_language)
    }
}

/// `text` cut to at most `max` bytes at a character boundary, saying that it was cut.
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n[… cut at {max} bytes]", &text[..end])
}

/// The text of an HTML fragment or page (tags dropped, entities decoded), without the plain
/// decorator's markup (`**bold**`), lines as wide as they come. CPU work: callers with whole
/// pages run it on the blocking pool.
pub(crate) fn html_to_text(html: &str) -> Result<String, html2text::Error> {
    html2text::config::plain_no_decorate()
        .allow_width_overflow()
        .string_from_read(html.as_bytes(), 100)
}

/// A snippet's text on one line (search results), or the snippet as it came.
pub(crate) fn snippet_text(html: &str) -> String {
    html_to_text(html)
        .map(|t| t.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| html.to_owned())
}

/// The error a tool reports for an HTTP failure: the status, and where a redirect pointed.
pub(crate) fn http_failure(response: &reqwest::Response) -> String {
    let status = response.status();
    match response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|l| l.to_str().ok())
    {
        Some(location) if status.is_redirection() => format!(
            "HTTP {status}: the server redirects to {location} (redirects are not followed; \
             request that URL if it should be read)"
        ),
        _ => format!("HTTP {status}"),
    }
}

/// The error a tool reports when its request got no response (no URL or internals).
pub(crate) fn transport_failure(error: &reqwest::Error) -> String {
    if error.is_connect() {
        "could not connect (the address may be unreachable or not allowed from this server)"
            .to_owned()
    } else if error.is_timeout() {
        "the request timed out".to_owned()
    } else {
        "the request failed".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_keeps_characters_whole_and_says_so() {
        assert_eq!(cut("héllo", 10), "héllo");
        assert_eq!(cut("héllo", 2), "h\n[… cut at 2 bytes]");
    }

    #[test]
    fn settings_are_checked_with_the_key_named() {
        assert!(check_settings(&serde_json::json!({"maxToolSteps": 3})).is_ok());
        let (field, _) = check_settings(&serde_json::json!({"maxToolSteps": 0})).unwrap_err();
        assert_eq!(field, "input.config.maxToolSteps");
        let (field, _) =
            check_settings(&serde_json::json!({"wikipediaLanguage": "../x"})).unwrap_err();
        assert_eq!(field, "input.config.wikipediaLanguage");
    }
}
