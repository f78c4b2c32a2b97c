//! WIKIPEDIA: the MediaWiki Action API (`AGENTRY_WIKIPEDIA_URL`, the agent's language edition):
//! `list=search` for titles and snippets, `prop=extracts` (`explaintext`) for an article as
//! plain text. Both bounded.

use serde_json::{Value, json};

use crate::{
    llm::provider::ToolSpec,
    tools::{http_failure, snippet_text, transport_failure},
};

/// Most search results handed to the model.
const MAX_RESULTS: usize = 5;
/// Most bytes of an API response read.
const MAX_RESPONSE_BYTES: usize = 2 * 1024 * 1024;

/// The `wikipedia_search` function.
pub fn search_spec() -> ToolSpec {
    ToolSpec {
        name: "wikipedia_search",
        description: "Search Wikipedia. Returns up to 5 article titles with a snippet each; \
            read one with wikipedia_page.",
        parameters: json!({
            "type": "object",
            "properties": {"query": {"type": "string", "description": "what to search for"}},
            "required": ["query"],
            "additionalProperties": false
        }),
    }
}

/// The `wikipedia_page` function.
pub fn page_spec() -> ToolSpec {
    ToolSpec {
        name: "wikipedia_page",
        description: "Read a Wikipedia article as plain text, by its exact title (as \
            wikipedia_search returned it). Long articles are cut.",
        parameters: json!({
            "type": "object",
            "properties": {"title": {"type": "string", "description": "the article's title"}},
            "required": ["title"],
            "additionalProperties": false
        }),
    }
}

/// One Action API call with `params`; the parsed JSON answer.
async fn call(http: &reqwest::Client, api: &str, params: &[(&str, &str)]) -> Result<Value, String> {
    let response = http
        .get(api)
        .query(params)
        .query(&[("format", "json"), ("formatversion", "2")])
        .send()
        .await
        .map_err(|e| format!("Wikipedia: {}", transport_failure(&e)))?;
    if !response.status().is_success() {
        return Err(format!("Wikipedia answered {}", http_failure(&response)));
    }
    let body = crate::llm::wire::read_capped(response, MAX_RESPONSE_BYTES).await;
    let value: Value =
        serde_json::from_str(&body).map_err(|_| "Wikipedia did not answer with JSON".to_owned())?;
    if let Some(info) = value.pointer("/error/info").and_then(Value::as_str) {
        return Err(format!("Wikipedia: {info}"));
    }
    Ok(value)
}

/// Searches `query` in the edition at `api`.
pub async fn search(http: &reqwest::Client, api: &str, query: &str) -> Result<String, String> {
    let query = query.trim();
    if query.is_empty() {
        return Err("the query is empty".into());
    }
    let limit = MAX_RESULTS.to_string();
    let value = call(
        http,
        api,
        &[
            ("action", "query"),
            ("list", "search"),
            ("srsearch", query),
            ("srlimit", &limit),
        ],
    )
    .await?;
    let hits = value
        .pointer("/query/search")
        .and_then(Value::as_array)
        .ok_or("Wikipedia's answer has no search results")?;
    if hits.is_empty() {
        return Ok(format!("No Wikipedia article matches \"{query}\"."));
    }
    let lines: Vec<String> = hits
        .iter()
        .take(MAX_RESULTS)
        .enumerate()
        .map(|(i, hit)| {
            format!(
                "{}. {}: {}",
                i + 1,
                hit["title"].as_str().unwrap_or_default(),
                snippet_text(hit["snippet"].as_str().unwrap_or_default())
            )
        })
        .collect();
    Ok(lines.join("\n"))
}

/// The plain text of the article `title` (redirects resolved) in the edition at `api`.
pub async fn page(http: &reqwest::Client, api: &str, title: &str) -> Result<String, String> {
    let title = title.trim();
    if title.is_empty() {
        return Err("the title is empty".into());
    }
    let value = call(
        http,
        api,
        &[
            ("action", "query"),
            ("prop", "extracts"),
            ("explaintext", "1"),
            ("redirects", "1"),
            ("titles", title),
        ],
    )
    .await?;
    let page = value
        .pointer("/query/pages/0")
        .ok_or("Wikipedia's answer has no page")?;
    if page.get("missing").is_some() || page.get("invalid").is_some() {
        return Err(format!(
            "Wikipedia has no article titled \"{title}\": search for it first"
        ));
    }
    let extract = page["extract"].as_str().unwrap_or_default().trim();
    if extract.is_empty() {
        return Err(format!("the article \"{title}\" has no text"));
    }
    Ok(format!(
        "{}\n\n{extract}",
        page["title"].as_str().unwrap_or(title)
    ))
}
