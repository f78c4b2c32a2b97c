//! HTTP_REQUEST: `GET` a public URL and return it as readable text (HTML converted by the
//! `html2text` crate; plain text and JSON as they are). The request is made by the
//! egress-checked client: no redirects followed (the model is told where one points, and a
//! request there is checked again), host names resolved and every internal address (private,
//! loopback, link-local and metadata ranges) refused, the connection made to the address that
//! passed; addresses written in the URL are checked before anything is sent. The tools' policy
//! has none of the operator's allowlist, and outside development only ports 80 and 443.

use serde_json::json;

use crate::{
    egress::Egress,
    llm::provider::ToolSpec,
    tools::{html_to_text, http_failure, transport_failure},
};

/// Most bytes of a page read (the text handed to the model is bounded again after conversion).
const MAX_PAGE_BYTES: usize = 1024 * 1024;
/// Longest URL accepted.
const MAX_URL_LEN: usize = 2048;

/// The `http_get` function.
pub fn spec() -> ToolSpec {
    ToolSpec {
        name: "http_get",
        description: "Fetch a public web page or API with HTTP GET and return its content as \
            text (HTML is converted to readable text). Only http and https URLs on the public \
            internet; redirects are reported, not followed.",
        parameters: json!({
            "type": "object",
            "properties": {"url": {"type": "string", "description": "an absolute http(s) URL"}},
            "required": ["url"],
            "additionalProperties": false
        }),
    }
}

/// Fetches `raw` under the egress policy; ports other than 80 and 443 only when `any_port`
/// (development).
pub async fn get(
    http: &reqwest::Client,
    egress: &Egress,
    any_port: bool,
    raw: &str,
) -> Result<String, String> {
    let raw = raw.trim();
    if raw.len() > MAX_URL_LEN {
        return Err(format!("the URL is longer than {MAX_URL_LEN} characters"));
    }
    let url = url::Url::parse(raw).map_err(|_| format!("`{raw}` is not an absolute URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("only http and https URLs can be fetched".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("URLs with credentials are not fetched".into());
    }
    if !any_port && !matches!(url.port_or_known_default(), Some(80 | 443)) {
        return Err("only the standard ports (80 for http, 443 for https) can be fetched".into());
    }
    egress.check_url(url.as_str())?;
    let response = http
        .get(url)
        .header(
            reqwest::header::ACCEPT,
            "text/html, text/plain;q=0.9, application/json;q=0.9, */*;q=0.1",
        )
        .send()
        .await
        .map_err(|e| transport_failure(&e))?;
    if !response.status().is_success() {
        return Err(http_failure(&response));
    }
    let kind = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/plain")
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let html = matches!(kind.as_str(), "text/html" | "application/xhtml+xml");
    let text = kind.starts_with("text/")
        || kind == "application/json"
        || kind == "application/xml"
        || kind.ends_with("+json")
        || kind.ends_with("+xml");
    if !html && !text {
        return Err(format!("the content is {kind}, not text"));
    }
    let body = crate::llm::wire::read_capped(response, MAX_PAGE_BYTES).await;
    if !html {
        return Ok(body);
    }
    // Converting a large page takes a while: on the blocking pool, not the runtime's workers.
    tokio::task::spawn_blocking(move || html_to_text(&body))
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| "the page's HTML could not be read".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn outside_development_only_the_standard_ports_are_fetched() {
        let http = reqwest::Client::new();
        let egress = Egress::default();
        let refused = get(&http, &egress, false, "http://example.com:8080/").await;
        assert!(refused.unwrap_err().contains("only the standard ports"));
        let refused = get(&http, &egress, false, "https://example.com:22/").await;
        assert!(refused.unwrap_err().contains("only the standard ports"));
        // Port 80 passes the rule and meets the address check next (10.x is internal).
        let next = get(&http, &egress, false, "http://10.0.0.1/").await;
        assert!(next.unwrap_err().contains("internal network"));
    }
}
