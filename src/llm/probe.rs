//! Live key checks: one cheap authenticated call (list the models) with a timeout.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};

use crate::llm::{ANTHROPIC_VERSION, ProviderKind, scrub};

/// What a key check found. Messages are safe to show: they never carry the key.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// Whether the provider accepted the key.
    pub ok: bool,
    /// Round-trip time of the call.
    pub latency_ms: i64,
    /// A sentence for the user.
    pub message: String,
    /// Model ids the key can use (first 200).
    pub models: Vec<String>,
    /// The provider answered that the key is not valid (HTTP 401 or 403).
    pub rejected: bool,
}

/// Most bytes of a models listing (or error) read.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Most model ids kept from a listing.
const MAX_MODELS: usize = 200;

/// Checks `secret` with one cheap authenticated call: an LLM provider lists its models
/// (OpenAI-compatible `GET {base}/models`, Anthropic `GET {base}/v1/models`); a search API runs a
/// one-result search (Brave `GET {base}/res/v1/web/search`, Tavily `POST {base}/search`).
pub async fn list_models(
    http: &reqwest::Client,
    kind: ProviderKind,
    base_url: &str,
    secret: &SecretString,
    timeout: Duration,
) -> ProbeResult {
    let request = match kind {
        ProviderKind::OpenAi | ProviderKind::HuggingFace | ProviderKind::Custom => http
            .get(format!("{base_url}/models"))
            .bearer_auth(secret.expose_secret()),
        ProviderKind::Anthropic => http
            .get(format!("{base_url}/v1/models"))
            .header("x-api-key", secret.expose_secret())
            .header("anthropic-version", ANTHROPIC_VERSION),
        ProviderKind::Brave => http
            .get(format!("{base_url}/res/v1/web/search"))
            .query(&[("q", "agentry"), ("count", "1")])
            .header("x-subscription-token", secret.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json"),
        ProviderKind::Tavily => http
            .post(format!("{base_url}/search"))
            .bearer_auth(secret.expose_secret())
            .json(&serde_json::json!({"query": "agentry", "max_results": 1})),
    };
    let started = Instant::now();
    let outcome = tokio::time::timeout(timeout, async {
        let response = request.send().await?;
        let status = response.status();
        let body = super::wire::read_capped(response, MAX_BODY_BYTES).await;
        Ok::<_, reqwest::Error>((status, body))
    })
    .await;
    let latency_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    let fail = |message: String| ProbeResult {
        ok: false,
        latency_ms,
        message,
        models: Vec::new(),
        rejected: false,
    };
    let (status, body) = match outcome {
        Err(_) => {
            return fail(format!(
                "the provider did not answer within {} s: it may be unreachable",
                timeout.as_secs()
            ));
        }
        Ok(Err(e)) => {
            let what = if e.is_connect() {
                "connection failed"
            } else {
                "request failed"
            };
            return fail(format!(
                "could not reach the provider at {base_url}: {what}"
            ));
        }
        Ok(Ok(answer)) => answer,
    };
    let upstream = upstream_message(&body, secret.expose_secret());
    match status.as_u16() {
        200..=299 if !kind.is_llm() => ProbeResult {
            ok: true,
            latency_ms,
            message: "the key works: a test search answered".into(),
            models: Vec::new(),
            rejected: false,
        },
        200..=299 => {
            let models = model_ids(&body);
            ProbeResult {
                ok: true,
                latency_ms,
                message: format!("the key works: {} models available", models.len()),
                models,
                rejected: false,
            }
        }
        401 | 403 => ProbeResult {
            rejected: true,
            ..fail(format!(
                "the provider rejected the key (HTTP {}){upstream}",
                status.as_u16()
            ))
        },
        429 => fail(format!(
            "the provider is rate-limiting this key (HTTP 429){upstream}"
        )),
        500..=599 => fail(format!(
            "the provider is unavailable (HTTP {}): try again later",
            status.as_u16()
        )),
        code => fail(format!(
            "unexpected answer from the provider (HTTP {code}){upstream}"
        )),
    }
}

/// `data[].id` of a models listing (both providers use that shape).
fn model_ids(body: &str) -> Vec<String> {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("data").and_then(|d| d.as_array()).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m.get("id").and_then(|id| id.as_str()).map(str::to_owned))
        .take(MAX_MODELS)
        .collect()
}

/// ": <provider's error message>" with the key scrubbed, or nothing.
fn upstream_message(body: &str, secret: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.pointer("/error/detail"))
                .or_else(|| v.pointer("/detail/error"))
                .and_then(|m| m.as_str())
                .map(|m| format!(": {}", scrub(m, secret)))
        })
        .unwrap_or_default()
}
