//! Rules for key input: names, provider-specific secret formats, endpoints, and the mask.

use url::Url;

use crate::{
    error::{AppError, AppResult},
    llm::ProviderKind,
};

/// Longest key name.
const MAX_NAME_LEN: usize = 100;
/// Longest secret accepted.
const MAX_SECRET_LEN: usize = 512;

/// A trimmed name of 1–100 printable characters.
pub fn name(field: &str, raw: &str) -> AppResult<String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(AppError::bad_input(field, "must not be empty"));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(AppError::bad_input(
            field,
            format!("must be at most {MAX_NAME_LEN} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(AppError::bad_input(
            field,
            "must not contain control characters",
        ));
    }
    Ok(name.to_owned())
}

/// Checks a secret's format for its provider: OpenAI `sk-…`, Anthropic `sk-ant-…`, Hugging Face
/// `hf_…`, CUSTOM anything non-empty. The message never repeats the secret.
pub fn secret(field: &str, provider: ProviderKind, raw: &str) -> AppResult<String> {
    let secret = raw.trim();
    if secret.is_empty() {
        return Err(AppError::bad_input(field, "must not be empty"));
    }
    if secret.len() > MAX_SECRET_LEN {
        return Err(AppError::bad_input(
            field,
            format!("must be at most {MAX_SECRET_LEN} characters"),
        ));
    }
    if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(AppError::bad_input(
            field,
            "must not contain spaces or control characters",
        ));
    }
    let rule = match provider {
        ProviderKind::OpenAi if secret.starts_with("sk-ant-") => {
            Some("looks like an Anthropic key: choose provider ANTHROPIC")
        }
        ProviderKind::OpenAi if !secret.starts_with("sk-") || secret.len() < 20 => {
            Some("an OpenAI key starts with `sk-` and is at least 20 characters")
        }
        ProviderKind::Anthropic if !secret.starts_with("sk-ant-") || secret.len() < 20 => {
            Some("an Anthropic key starts with `sk-ant-` and is at least 20 characters")
        }
        ProviderKind::HuggingFace if !secret.starts_with("hf_") || secret.len() < 10 => {
            Some("a Hugging Face token starts with `hf_`")
        }
        ProviderKind::Tavily if !secret.starts_with("tvly-") || secret.len() < 20 => {
            Some("a Tavily key starts with `tvly-` and is at least 20 characters")
        }
        ProviderKind::Brave if secret.len() < 20 => {
            Some("a Brave Search API key is at least 20 characters")
        }
        _ => None,
    };
    match rule {
        Some(rule) => Err(AppError::bad_input(field, rule)),
        None => Ok(secret.to_owned()),
    }
}

/// The endpoint rule: CUSTOM keys need an absolute http(s) URL (plain http only to loopback
/// addresses in production); other providers take none (they use the configured base URL).
pub fn endpoint(
    field: &str,
    provider: ProviderKind,
    raw: Option<&str>,
    production: bool,
) -> AppResult<Option<String>> {
    let raw = raw.map(str::trim).filter(|r| !r.is_empty());
    let Some(raw) = raw else {
        return if provider == ProviderKind::Custom {
            Err(AppError::bad_input(
                field,
                "is required for CUSTOM keys: the base URL of an OpenAI-compatible server, e.g. http://localhost:11434/v1",
            ))
        } else {
            Ok(None)
        };
    };
    if provider != ProviderKind::Custom {
        return Err(AppError::bad_input(
            field,
            "only CUSTOM keys take an endpoint; other providers use the server's configured base URL",
        ));
    }
    if raw.len() > 2048 {
        return Err(AppError::bad_input(
            field,
            "must be at most 2048 characters",
        ));
    }
    let url = Url::parse(raw).map_err(|_| {
        AppError::bad_input(
            field,
            "must be an absolute URL like https://llm.example.com/v1",
        )
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(AppError::bad_input(
            field,
            "must not contain credentials: put the secret in `secret`",
        ));
    }
    match url.scheme() {
        "https" => {}
        "http" if !production || is_loopback(&url) => {}
        "http" => {
            return Err(AppError::bad_input(
                field,
                "must use https (plain http is allowed only for loopback addresses)",
            ));
        }
        _ => return Err(AppError::bad_input(field, "must be an http or https URL")),
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(AppError::bad_input(
            field,
            "must not have a query or fragment",
        ));
    }
    Ok(Some(url.as_str().trim_end_matches('/').to_owned()))
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The only form of a key ever shown: its provider prefix and last four characters
/// (`sk-…abcd`, `sk-ant-…abcd`, `hf_…abcd`); short CUSTOM secrets show nothing of themselves.
pub fn mask(provider: ProviderKind, secret: &str) -> String {
    let prefix = match provider {
        ProviderKind::Anthropic => "sk-ant-",
        ProviderKind::OpenAi => "sk-",
        ProviderKind::HuggingFace => "hf_",
        ProviderKind::Tavily => "tvly-",
        ProviderKind::Custom | ProviderKind::Brave => "",
    };
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 12 {
        return format!("{prefix}…");
    }
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{prefix}…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_show_the_prefix_and_last_four_only() {
        assert_eq!(
            mask(ProviderKind::OpenAi, "sk-proj-1234567890abcd"),
            "sk-…abcd"
        );
        assert_eq!(
            mask(ProviderKind::Anthropic, "sk-ant-api03-xyzxyzxyz9876"),
            "sk-ant-…9876"
        );
        assert_eq!(
            mask(ProviderKind::HuggingFace, "hf_abcdefghijklmnWXYZ"),
            "hf_…WXYZ"
        );
        assert_eq!(mask(ProviderKind::Custom, "short"), "…");
    }

    #[test]
    fn endpoints_follow_the_rules() {
        let ok = |p, raw, prod| endpoint("e", p, raw, prod);
        assert_eq!(
            ok(
                ProviderKind::Custom,
                Some("http://localhost:11434/v1/"),
                true
            )
            .unwrap()
            .as_deref(),
            Some("http://localhost:11434/v1")
        );
        assert!(ok(ProviderKind::Custom, Some("http://127.0.0.1:8000/v1"), true).is_ok());
        assert!(ok(ProviderKind::Custom, Some("http://llm.internal/v1"), true).is_err());
        assert!(ok(ProviderKind::Custom, Some("http://llm.internal/v1"), false).is_ok());
        assert!(ok(ProviderKind::Custom, Some("ftp://x/v1"), false).is_err());
        assert!(ok(ProviderKind::Custom, Some("https://user:pw@x/v1"), false).is_err());
        assert!(ok(ProviderKind::Custom, None, false).is_err());
        assert!(ok(ProviderKind::OpenAi, Some("https://x/v1"), false).is_err());
        assert_eq!(ok(ProviderKind::OpenAi, None, false).unwrap(), None);
    }
}
