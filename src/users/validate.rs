//! Validated inputs: parse once at the edge, name the field and the rule when it fails.

use crate::error::{AppError, AppResult};

/// Longest email accepted (RFC 5321 path limit).
const MAX_EMAIL_LEN: usize = 254;
/// Longest display name accepted, in characters.
pub const MAX_DISPLAY_NAME_LEN: usize = 100;

/// A syntactically valid, trimmed, lower-cased email address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Parses and normalises an email from field `field`.
    pub fn parse(field: &str, raw: &str) -> AppResult<Self> {
        let email = raw.trim().to_lowercase();
        if email.is_empty() {
            return Err(AppError::bad_input(field, "must not be empty"));
        }
        if email.len() > MAX_EMAIL_LEN {
            return Err(AppError::bad_input(
                field,
                format!("must be at most {MAX_EMAIL_LEN} characters"),
            ));
        }
        let parsed = email_address::EmailAddress::parse_with_options(
            &email,
            email_address::Options::default()
                .without_display_text()
                .without_domain_literal(),
        )
        .map_err(|_| {
            AppError::bad_input(field, "must be an email address like name@example.com")
        })?;
        // A bare host (`name@localhost`) is valid syntax but never a deliverable address here.
        if !parsed.domain().contains('.') {
            return Err(AppError::bad_input(
                field,
                "must be an email address like name@example.com",
            ));
        }
        Ok(Self(email))
    }

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A trimmed display name of 1–100 printable characters.
pub fn display_name(field: &str, raw: &str) -> AppResult<String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(AppError::bad_input(field, "must not be empty"));
    }
    let chars = name.chars().count();
    if chars > MAX_DISPLAY_NAME_LEN {
        return Err(AppError::bad_input(
            field,
            format!("must be at most {MAX_DISPLAY_NAME_LEN} characters (got {chars})"),
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

/// A free-text reason (suspension): trimmed, 1–500 characters.
pub fn reason(field: &str, raw: &str) -> AppResult<String> {
    let text = raw.trim();
    if text.is_empty() {
        return Err(AppError::bad_input(field, "must not be empty"));
    }
    if text.chars().count() > 500 {
        return Err(AppError::bad_input(field, "must be at most 500 characters"));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            Email::parse("email", "  Ada@Example.COM ")
                .unwrap()
                .as_str(),
            "ada@example.com"
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@localhost",
            "a b@example.com",
        ] {
            let err = Email::parse("email", bad).unwrap_err();
            assert!(
                matches!(err, AppError::BadInput { ref field, .. } if field == "email"),
                "{bad}"
            );
        }
    }

    #[test]
    fn display_names_are_trimmed_and_bounded() {
        assert_eq!(display_name("n", "  Ada ").unwrap(), "Ada");
        assert!(display_name("n", "   ").is_err());
        assert!(display_name("n", &"x".repeat(101)).is_err());
        assert!(display_name("n", "a\u{0}b").is_err());
    }
}
