//! Passwords: the policy (length, zxcvbn strength) and bcrypt hashing on the blocking pool.
//!
//! bcrypt reads at most 72 bytes. Rather than truncate silently (or refuse long passphrases),
//! the password is first condensed with HMAC-SHA-256 into 44 base64 bytes, which bcrypt then
//! hashes with `non_truncating_hash`: every byte of the password counts.

use std::sync::Arc;

use anyhow::Context;
use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use tokio::sync::{OnceCell, Semaphore};

use crate::error::{AppError, AppResult};

/// Fewest characters a password may have.
pub const MIN_LEN: usize = 12;
/// Most characters a password may have.
pub const MAX_LEN: usize = 128;
/// Lowest acceptable zxcvbn score (0–4).
const MIN_SCORE: u8 = 3;

/// Hashes and verifies passwords at the configured cost, never on the async runtime.
#[derive(Clone)]
pub struct PasswordHasher {
    cost: u32,
    /// Bounds concurrent hashes so logins cannot exhaust the blocking pool or starve requests.
    permits: Arc<Semaphore>,
    /// A hash of a random password, verified against when an email is unknown, so that a failed
    /// login takes the same time whether or not the account exists.
    dummy: Arc<OnceCell<String>>,
}

impl PasswordHasher {
    /// A hasher with bcrypt `cost`, running at most one hash per CPU core at a time.
    pub fn new(cost: u32) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            cost,
            permits: Arc::new(Semaphore::new(cores)),
            dummy: Arc::new(OnceCell::new()),
        }
    }

    /// Hashes `password` for storage.
    pub async fn hash(&self, password: &SecretString) -> AppResult<String> {
        let input = condense(password)?;
        let cost = self.cost;
        self.blocking(move || {
            bcrypt::non_truncating_hash(input, cost).context("bcrypt hash failed")
        })
        .await
    }

    /// Checks `password` against a stored hash; `None` (no such account, or no password set)
    /// still spends one bcrypt verification so the answer takes the same time.
    pub async fn verify(&self, password: &SecretString, stored: Option<&str>) -> AppResult<bool> {
        let (hash, real) = match stored {
            Some(hash) => (hash.to_owned(), true),
            None => (self.dummy_hash().await?, false),
        };
        let input = condense(password)?;
        let ok = self
            .blocking(move || {
                bcrypt::non_truncating_verify(input, &hash).context("bcrypt verify failed")
            })
            .await?;
        Ok(ok && real)
    }

    async fn dummy_hash(&self) -> AppResult<String> {
        let hasher = self.clone();
        self.dummy
            .get_or_try_init(|| async move {
                let random = SecretString::from(uuid::Uuid::new_v4().to_string());
                hasher.hash(&random).await
            })
            .await
            .cloned()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> AppResult<T> {
        let _permit = self
            .permits
            .acquire()
            .await
            .context("password hasher closed")?;
        let result = tokio::task::spawn_blocking(work)
            .await
            .context("password hashing task failed")??;
        Ok(result)
    }
}

/// HMAC-SHA-256 of the password under a fixed domain key, base64-encoded (44 bytes < 72).
fn condense(password: &SecretString) -> anyhow::Result<String> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(b"agentry password v1").context("HMAC key rejected")?;
    mac.update(password.expose_secret().as_bytes());
    Ok(base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// Checks the password policy: 12–128 characters, no composition rules, and a zxcvbn score of
/// at least 3 given what the service knows about the user (email, display name). The error
/// carries zxcvbn's own feedback.
pub fn check_policy(field: &str, password: &SecretString, user_inputs: &[&str]) -> AppResult<()> {
    let plain = password.expose_secret();
    let chars = plain.chars().count();
    if chars < MIN_LEN {
        return Err(AppError::bad_input(
            field,
            format!("must be at least {MIN_LEN} characters (got {chars})"),
        ));
    }
    if chars > MAX_LEN {
        return Err(AppError::bad_input(
            field,
            format!("must be at most {MAX_LEN} characters (got {chars})"),
        ));
    }
    let mut inputs: Vec<&str> = user_inputs.to_vec();
    // The local part of an email is the part people build passwords from.
    for input in user_inputs {
        if let Some((local, _)) = input.split_once('@') {
            inputs.push(local);
        }
    }
    let estimate = zxcvbn::zxcvbn(plain, &inputs);
    if u8::from(estimate.score()) >= MIN_SCORE {
        return Ok(());
    }
    let mut message = String::from("is too easy to guess");
    if let Some(feedback) = estimate.feedback() {
        if let Some(warning) = feedback.warning() {
            message.push_str(&format!(": {warning}"));
        }
        let tips: Vec<String> = feedback
            .suggestions()
            .iter()
            .map(ToString::to_string)
            .collect();
        if !tips.is_empty() {
            message.push_str(&format!(". {}", tips.join(" ")));
        }
    }
    Err(AppError::bad_input(field, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[tokio::test]
    async fn hash_verifies_only_the_same_password_even_past_72_bytes() {
        let hasher = PasswordHasher::new(4);
        let long = "correct horse battery staple ".repeat(4);
        let hash = hasher.hash(&secret(&long)).await.unwrap();
        assert!(hasher.verify(&secret(&long), Some(&hash)).await.unwrap());
        // Differs only after byte 72: bcrypt alone would accept it.
        let mut other = long.clone();
        other.push('!');
        assert!(!hasher.verify(&secret(&other), Some(&hash)).await.unwrap());
        assert!(!hasher.verify(&secret(&long), None).await.unwrap());
    }

    #[test]
    fn policy_refuses_short_long_and_guessable_passwords() {
        let err = check_policy("password", &secret("short"), &[]).unwrap_err();
        assert!(err.message().contains("at least 12"));
        let err = check_policy("password", &secret(&"x".repeat(129)), &[]).unwrap_err();
        assert!(err.message().contains("at most 128"));
        let err = check_policy("password", &secret("qwertyuiopasdf"), &[]).unwrap_err();
        assert!(
            err.message().contains("too easy to guess"),
            "{}",
            err.message()
        );
        let err = check_policy(
            "password",
            &secret("alice.liddell2024"),
            &["alice.liddell@example.com"],
        )
        .unwrap_err();
        assert!(
            err.message().contains("too easy to guess"),
            "{}",
            err.message()
        );
        check_policy("password", &secret("violet-harbor-canoe-92"), &[]).unwrap();
    }
}
