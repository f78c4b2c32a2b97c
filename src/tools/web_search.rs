//! WEB_SEARCH: one of three backends behind one function — the user's own Brave Search or
//! Tavily key from the vault (their newest active BRAVE or TAVILY key), else the operator's
//! SearXNG instance (`AGENTRY_SEARXNG_URL`, JSON API enabled in its `search.formats`). Results:
//! title, URL and snippet, at most [`MAX_RESULTS`].

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::{
    llm::provider::ToolSpec,
    tools::{http_failure, snippet_text, transport_failure},
};

/// Most results handed to the model.
pub const MAX_RESULTS: usize = 5;
/// Most bytes of a search response read.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Where a run's searches go.
pub enum Backend {
    /// Brave Search API (`GET {base}/res/v1/web/search`, `X-Subscription-Token`).
    Brave {
        /// `AGENTRY_BRAVE_BASE_URL`.
        base: String,
        /// The user's key.
        key: SecretString,
    },
    /// Tavily (`POST {base}/search`, bearer key).
    Tavily {
        /// `AGENTRY_TAVILY_BASE_URL`.
        base: String,
        /// The user's key.
        key: SecretString,
    },
    /// The operator's SearXNG (`GET {url}/search?format=json`).
    Searxng(String),
}

impl Backend {
    /// The backend's name, for messages.
    fn name(&self) -> &'static str {
        match self {
            Self::Brave { .. } => "Brave Search",
            Self::Tavily { .. } => "Tavily",
            Self::Searxng(_) => "the search backend",
        }
    }
}

/// The `web_search` function.
pub fn spec() -> ToolSpec {
    ToolSpec {
        name: "web_search",
        description: "Search the web. Returns up to 5 results, each with its title, URL and a \
            snippet. Use it for recent events and facts after your training data.",
        parameters: json!({
            "type": "object",
            "properties": {"query": {"type": "string", "description": "what to search for"}},
            "required": ["query"],
            "additionalProperties": false
        }),
    }
}

/// Searches `query`. `operator_http` reaches the operator's SearXNG; `http` (egress-checked,
/// like provider calls) the search APIs the user's key is for.
pub async fn search(
    backend: &Backend,
    http: &reqwest::Client,
    operator_http: &reqwest::Client,
    query: &str,
) -> Result<String, String> {
    let query = query.trim();
    if query.is_empty() {
        return Err("the query is empty".into());
    }
    let count = MAX_RESULTS.to_string();
    let request = match backend {
        Backend::Brave { base, key } => http
            .get(format!("{}/res/v1/web/search", base.trim_end_matches('/')))
            .query(&[("q", query), ("count", count.as_str())])
            .header("x-subscription-token", key.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json"),
        Backend::Tavily { base, key } => http
            .post(format!("{}/search", base.trim_end_matches('/')))
            .bearer_auth(key.expose_secret())
            .json(&json!({"query": query, "max_results": MAX_RESULTS})),
        Backend::Searxng(base) => operator_http
            .get(format!("{}/search", base.trim_end_matches('/')))
            .query(&[("q", query), ("format", "json")])
            .header(reqwest::header::ACCEPT, "application/json"),
    };
    let name = backend.name();
    let response = request
        .send()
        .await
        .map_err(|e| format!("{name}: {}", transport_failure(&e)))?;
    let status = response.status();
    if matches!(status.as_u16(), 401 | 403) && !matches!(backend, Backend::Searxng(_)) {
        return Err(format!(
            "{name} rejected the search key (HTTP {status}): check it with testApiKey"
        ));
    }
    if !status.is_success() {
        return Err(format!("{name} answered {}", http_failure(&response)));
    }
    let body = crate::llm::wire::read_capped(response, MAX_RESPONSE_BYTES).await;
    let parsed: Value =
        serde_json::from_str(&body).map_err(|_| format!("{name} did not answer with JSON"))?;
    // (title, url, snippet) fields of each backend's results.
    let (results, snippet) = match backend {
        Backend::Brave { .. } => (parsed.pointer("/web/results"), "description"),
        Backend::Tavily { .. } => (parsed.get("results"), "content"),
        Backend::Searxng(_) => (parsed.get("results"), "content"),
    };
    let Some(results) = results.and_then(Value::as_array) else {
        // Brave leaves out `web` when nothing matched.
        return match backend {
            Backend::Brave { .. } => Ok(format!("No results for \"{query}\".")),
            _ => Err(format!("{name}'s answer has no results")),
        };
    };
    if results.is_empty() {
        return Ok(format!("No results for \"{query}\"."));
    }
    let field = |r: &Value, name: &str| r[name].as_str().unwrap_or_default().trim().to_owned();
    let lines: Vec<String> = results
        .iter()
        .take(MAX_RESULTS)
        .enumerate()
        .map(|(i, r)| {
            format!(
                "{}. {}\n   {}\n   {}",
                i + 1,
                field(r, "title"),
                field(r, "url"),
                snippet_text(&field(r, snippet))
            )
        })
        .collect();
    Ok(lines.join("\n"))
}
