//! LLM providers: the wire formats of OpenAI, Anthropic, Hugging Face and OpenAI-compatible
//! servers, and the pricing table that turns tokens into money.

pub mod anthropic;
pub mod openai;
pub mod pricing;
pub mod probe;
pub mod provider;
pub mod wire;

use secrecy::SecretString;

use crate::{
    config::Config,
    llm::{
        anthropic::Anthropic,
        openai::OpenAiCompatible,
        provider::{Limits, Provider},
    },
};

/// Which API a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI's API.
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
    /// Hugging Face's OpenAI-compatible router.
    HuggingFace,
    /// Any OpenAI-compatible server at a user-given endpoint (Ollama, vLLM, llama.cpp).
    Custom,
    /// Brave Search API (a search key, for the WEB_SEARCH tool; no model).
    Brave,
    /// Tavily Search API (a search key, for the WEB_SEARCH tool; no model).
    Tavily,
}

impl ProviderKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "OPENAI",
            Self::Anthropic => "ANTHROPIC",
            Self::HuggingFace => "HUGGINGFACE",
            Self::Custom => "CUSTOM",
            Self::Brave => "BRAVE",
            Self::Tavily => "TAVILY",
        }
    }

    /// Whether the key is for a language model (agents run on it) rather than a search API.
    pub fn is_llm(self) -> bool {
        !matches!(self, Self::Brave | Self::Tavily)
    }

    /// Parses the stored name.
    pub fn from_stored(name: &str) -> Option<Self> {
        Some(match name {
            "OPENAI" => Self::OpenAi,
            "ANTHROPIC" => Self::Anthropic,
            "HUGGINGFACE" => Self::HuggingFace,
            "CUSTOM" => Self::Custom,
            "BRAVE" => Self::Brave,
            "TAVILY" => Self::Tavily,
            _ => return None,
        })
    }

    /// Whether the provider speaks OpenAI's Chat Completions (and `/models`) wire format.
    pub fn is_openai_compatible(self) -> bool {
        matches!(self, Self::OpenAi | Self::HuggingFace | Self::Custom)
    }

    /// The base URL requests go to: the configured one, or the key's own endpoint for CUSTOM.
    pub fn base_url<'a>(self, config: &'a Config, endpoint: Option<&'a str>) -> &'a str {
        let base = match self {
            Self::OpenAi => config.openai_base_url.as_str(),
            Self::Anthropic => config.anthropic_base_url.as_str(),
            Self::HuggingFace => config.huggingface_base_url.as_str(),
            Self::Custom => endpoint.unwrap_or_default(),
            Self::Brave => config.brave_base_url.as_str(),
            Self::Tavily => config.tavily_base_url.as_str(),
        };
        base.trim_end_matches('/')
    }
}

/// The `anthropic-version` header every Anthropic request carries.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Removes every occurrence of `secret` from provider-supplied text and bounds its length, so
/// an upstream message that echoes the key never reaches a response or a log.
pub fn scrub(text: &str, secret: &str) -> String {
    let cleaned = if secret.len() >= 4 {
        text.replace(secret, "[redacted]")
    } else {
        text.to_owned()
    };
    let mut out: String = cleaned
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect();
    if cleaned.chars().count() > 300 {
        out.push('…');
    }
    out
}

/// Builds the provider for a key (`None` for a search key: no model runs on it).
/// `limits.timeout` bounds the wait for response headers and for each gap between stream chunks
/// (an idle stream longer than that yields Err(Timeout) and ends); an event over
/// `limits.max_event_bytes` yields Err(Malformed) and ends.
pub fn for_kind(
    kind: ProviderKind,
    http: reqwest::Client,
    base_url: String,
    secret: SecretString,
    limits: impl Into<Limits>,
) -> Option<Box<dyn Provider>> {
    let limits = limits.into();
    match kind {
        ProviderKind::Anthropic => Some(Box::new(Anthropic::new(http, base_url, secret, limits))),
        ProviderKind::OpenAi | ProviderKind::HuggingFace | ProviderKind::Custom => Some(Box::new(
            OpenAiCompatible::new(http, base_url, secret, limits),
        )),
        ProviderKind::Brave | ProviderKind::Tavily => None,
    }
}
