//! WEB_SEARCH: the operator's SearXNG instance, through its JSON API
//! (`GET {AGENTRY_SEARXNG_URL}/search?q=…&format=json`, which the instance must enable in its
//! `search.formats`). Results: title, URL and snippet, at most [`MAX_RESULTS`].

use serde_json::{Value, json};

use crate::{
    llm::provider::ToolSpec,
    tools::{http_failure, read_body, transport_failure},
};

/// Most results handed to the model.
pub const MAX_RESULTS: usize = 5;
/// Most bytes of a search response read.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

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

/// Searches `query` on the SearXNG instance at `base`.
pub async fn search(http: &reqwest::Client, base: &str, query: &str) -> Result<String, String> {
    let query = query.trim();
    if query.is_empty() {
        return Err("the query is empty".into());
    }
    let response = http
        .get(format!("{}/search", base.trim_end_matches('/')))
        .query(&[("q", query), ("format", "json")])
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("the search backend: {}", transport_failure(&e)))?;
    if !response.status().is_success() {
        return Err(format!(
            "the search backend answered {}",
            http_failure(&response)
        ));
    }
    let body = read_body(response, MAX_RESPONSE_BYTES).await;
    let parsed: Value = serde_json::from_str(&body)
        .map_err(|_| "the search backend did not answer with JSON".to_owned())?;
    let results = parsed["results"]
        .as_array()
        .ok_or("the search backend's answer has no `results`")?;
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
                field(r, "content")
            )
        })
        .collect();
    Ok(lines.join("\n"))
}
