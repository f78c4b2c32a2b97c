//! The vault: secrets at rest (provider API keys, OAuth tokens) under AES-256-GCM-SIV.
//!
//! Stored form: `version (1) | key id length (1) | key id | nonce (12) | ciphertext + tag (16)`.
//! The associated data binds each ciphertext to its table, column, row id and owner, so a
//! ciphertext copied into another row or another user's record does not decrypt.
//! Keys come from `AGENTRY_ENCRYPTION_KEYS` (`id:base64,…`): the first encrypts, all decrypt,
//! so a new key can be put first and old rows rewrapped (`agentry rotate-encryption-key`).

use aes_gcm_siv::{
    Aes256GcmSiv, Nonce,
    aead::{Aead, KeyInit, Payload},
};
use base64::Engine;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

/// Format version written in front of every ciphertext.
const VERSION: u8 = 1;
/// Nonce length (96 bits).
const NONCE_LEN: usize = 12;
/// Longest key id.
const MAX_KEY_ID_LEN: usize = 32;

/// Where a ciphertext lives; mixed into the AEAD so it cannot be moved.
#[derive(Debug, Clone, Copy)]
pub struct SecretSlot<'a> {
    /// Table name, e.g. `api_keys`.
    pub table: &'a str,
    /// Column name, e.g. `secret_ciphertext`.
    pub column: &'a str,
    /// The row's id.
    pub row_id: Uuid,
    /// The owning user's id.
    pub user_id: Uuid,
}

impl SecretSlot<'_> {
    fn aad(&self) -> Vec<u8> {
        format!(
            "agentry:v1|{}|{}|{}|{}",
            self.table, self.column, self.row_id, self.user_id
        )
        .into_bytes()
    }
}

/// Why a secret could not be read or the keys not loaded.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The ciphertext names a key the configuration does not hold.
    #[error("ciphertext was encrypted with key `{0}`, which is not in AGENTRY_ENCRYPTION_KEYS")]
    UnknownKey(String),
    /// Tampered, truncated, or bound to another row or user.
    #[error("ciphertext failed authentication (tampered, or copied from another record)")]
    Invalid,
    /// The configured key list is unusable.
    #[error("AGENTRY_ENCRYPTION_KEYS is invalid: {0}")]
    BadKeys(String),
}

/// A named AES-256-GCM-SIV key.
struct VaultKey {
    id: String,
    cipher: Aes256GcmSiv,
}

/// Encrypts with the active (first) key; decrypts with any configured key.
pub struct Vault {
    keys: Vec<VaultKey>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Vault").field("key_ids", &ids).finish()
    }
}

impl Vault {
    /// Parses `id:base64,id:base64,…` (each key 32 bytes; ids 1–32 of `[A-Za-z0-9_-]`, unique).
    pub fn from_config(spec: &SecretString) -> Result<Self, VaultError> {
        let mut keys = Vec::new();
        for entry in spec
            .expose_secret()
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let (id, material) = entry
                .split_once(':')
                .ok_or_else(|| VaultError::BadKeys("each entry must be `id:base64key`".into()))?;
            let id = id.trim();
            if id.is_empty()
                || id.len() > MAX_KEY_ID_LEN
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(VaultError::BadKeys(format!(
                    "key id `{id}` must be 1–{MAX_KEY_ID_LEN} letters, digits, `-` or `_`"
                )));
            }
            if keys.iter().any(|k: &VaultKey| k.id == id) {
                return Err(VaultError::BadKeys(format!("key id `{id}` appears twice")));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(material.trim())
                .map_err(|_| VaultError::BadKeys(format!("key `{id}` is not valid base64")))?;
            let cipher = Aes256GcmSiv::new_from_slice(&bytes).map_err(|_| {
                VaultError::BadKeys(format!(
                    "key `{id}` must be 32 bytes (got {}); generate one with `openssl rand -base64 32`",
                    bytes.len()
                ))
            })?;
            keys.push(VaultKey {
                id: id.to_owned(),
                cipher,
            });
        }
        if keys.is_empty() {
            return Err(VaultError::BadKeys("no key given".into()));
        }
        Ok(Self { keys })
    }

    /// A fresh key list entry `id:base64` with 32 random bytes (development bootstrap).
    pub fn generate_key_spec(id: &str) -> String {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        format!(
            "{id}:{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        )
    }

    /// The id of the key new ciphertexts use.
    pub fn active_key_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Encrypts `plaintext` for `slot` with the active key and a random nonce.
    pub fn encrypt(
        &self,
        slot: SecretSlot<'_>,
        plaintext: &SecretString,
    ) -> Result<Vec<u8>, VaultError> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let aad = slot.aad();
        let ciphertext = key
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext.expose_secret().as_bytes(),
                    aad: &aad,
                },
            )
            // AES-GCM-SIV refuses only messages over 64 GiB.
            .map_err(|_| VaultError::Invalid)?;
        let mut out = Vec::with_capacity(2 + key.id.len() + NONCE_LEN + ciphertext.len());
        out.push(VERSION);
        out.push(key.id.len() as u8);
        out.extend_from_slice(key.id.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// Decrypts a stored secret, checking it belongs to `slot`.
    pub fn decrypt(&self, slot: SecretSlot<'_>, stored: &[u8]) -> Result<SecretString, VaultError> {
        let (key_id, nonce, ciphertext) = split(stored)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or_else(|| VaultError::UnknownKey(key_id.to_owned()))?;
        let aad = slot.aad();
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| VaultError::Invalid)?;
        let plain = key
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| VaultError::Invalid)?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| VaultError::Invalid)
    }

    /// Whether a stored secret uses a key other than the active one.
    pub fn needs_rewrap(&self, stored: &[u8]) -> bool {
        split(stored).map_or(true, |(id, _, _)| id != self.active_key_id())
    }

    /// Re-encrypts a stored secret under the active key (same slot).
    pub fn rewrap(&self, slot: SecretSlot<'_>, stored: &[u8]) -> Result<Vec<u8>, VaultError> {
        let plain = self.decrypt(slot, stored)?;
        self.encrypt(slot, &plain)
    }
}

/// Splits the stored form into key id, nonce and ciphertext.
fn split(stored: &[u8]) -> Result<(&str, &[u8], &[u8]), VaultError> {
    let (&version, rest) = stored.split_first().ok_or(VaultError::Invalid)?;
    if version != VERSION {
        return Err(VaultError::Invalid);
    }
    let (&id_len, rest) = rest.split_first().ok_or(VaultError::Invalid)?;
    let id_len = usize::from(id_len);
    if rest.len() < id_len + NONCE_LEN + 16 {
        return Err(VaultError::Invalid);
    }
    let (id, rest) = rest.split_at(id_len);
    let id = std::str::from_utf8(id).map_err(|_| VaultError::Invalid)?;
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    Ok((id, nonce, ciphertext))
}

/// Re-encrypts under the active key every secret of one column whose ciphertext is under
/// another, in batches: `page` lists `(row id, user id, ciphertext)` after a cursor, `slot` says
/// where a row's secret lives, and `swap` replaces a ciphertext only if it is still the one read
/// (a concurrent write wins). Safe to interrupt and re-run. Returns how many rows changed. (Key
/// rotation, `rotate-encryption-key`, runs it for every single-secret column.)
pub async fn rewrap_column(
    conn: &mut diesel_async::AsyncPgConnection,
    vault: &Vault,
    batch: i64,
    page: impl AsyncFnMut(
        &mut diesel_async::AsyncPgConnection,
        Option<Uuid>,
        i64,
    ) -> diesel::QueryResult<Vec<(Uuid, Uuid, Vec<u8>)>>,
    slot: fn(Uuid, Uuid) -> SecretSlot<'static>,
    mut swap: impl AsyncFnMut(
        &mut diesel_async::AsyncPgConnection,
        Uuid,
        &[u8],
        &[u8],
    ) -> diesel::QueryResult<bool>,
) -> anyhow::Result<u64> {
    crate::db::for_each_row(
        conn,
        batch,
        page,
        |row| row.0,
        async |conn, (id, user_id, stored)| {
            if !vault.needs_rewrap(&stored) {
                return Ok(false);
            }
            let where_ = slot(id, user_id);
            let fresh = vault
                .rewrap(where_, &stored)
                .map_err(|e| anyhow::anyhow!("{} row {id}: {e}", where_.table))?;
            Ok(swap(conn, id, &stored, &fresh).await?)
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault(spec: &str) -> Vault {
        Vault::from_config(&SecretString::from(spec.to_owned())).unwrap()
    }

    fn slot(row: Uuid, user: Uuid) -> SecretSlot<'static> {
        SecretSlot {
            table: "api_keys",
            column: "secret_ciphertext",
            row_id: row,
            user_id: user,
        }
    }

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn round_trip_with_a_fresh_nonce_each_time() {
        let v = vault(&Vault::generate_key_spec("k1"));
        let s = slot(Uuid::now_v7(), Uuid::now_v7());
        let a = v.encrypt(s, &secret("sk-test-123")).unwrap();
        let b = v.encrypt(s, &secret("sk-test-123")).unwrap();
        assert_ne!(a, b, "nonces must differ");
        assert_eq!(v.decrypt(s, &a).unwrap().expose_secret(), "sk-test-123");
        assert!(!a.windows(11).any(|w| w == b"sk-test-123"));
    }

    #[test]
    fn a_tampered_byte_fails() {
        let v = vault(&Vault::generate_key_spec("k1"));
        let s = slot(Uuid::now_v7(), Uuid::now_v7());
        let mut stored = v.encrypt(s, &secret("sk-test-123")).unwrap();
        let last = stored.len() - 1;
        stored[last] ^= 1;
        assert!(matches!(v.decrypt(s, &stored), Err(VaultError::Invalid)));
        assert!(matches!(
            v.decrypt(s, &stored[..5]),
            Err(VaultError::Invalid)
        ));
    }

    #[test]
    fn a_ciphertext_copied_to_another_row_or_user_fails() {
        let v = vault(&Vault::generate_key_spec("k1"));
        let (row, user) = (Uuid::now_v7(), Uuid::now_v7());
        let stored = v.encrypt(slot(row, user), &secret("sk-test-123")).unwrap();
        assert!(matches!(
            v.decrypt(slot(Uuid::now_v7(), user), &stored),
            Err(VaultError::Invalid)
        ));
        assert!(matches!(
            v.decrypt(slot(row, Uuid::now_v7()), &stored),
            Err(VaultError::Invalid)
        ));
        let other_column = SecretSlot {
            column: "other",
            ..slot(row, user)
        };
        assert!(matches!(
            v.decrypt(other_column, &stored),
            Err(VaultError::Invalid)
        ));
    }

    #[test]
    fn an_unknown_key_id_is_a_clear_error() {
        let old = vault(&Vault::generate_key_spec("old"));
        let s = slot(Uuid::now_v7(), Uuid::now_v7());
        let stored = old.encrypt(s, &secret("sk-test-123")).unwrap();
        let new = vault(&Vault::generate_key_spec("new"));
        let err = new.decrypt(s, &stored).unwrap_err();
        assert!(matches!(&err, VaultError::UnknownKey(id) if id == "old"));
        assert!(err.to_string().contains("`old`"));
    }

    #[test]
    fn rotation_leaves_every_row_readable_with_only_the_new_key() {
        let old_spec = Vault::generate_key_spec("old");
        let new_spec = Vault::generate_key_spec("new");
        let old = vault(&old_spec);
        let s = slot(Uuid::now_v7(), Uuid::now_v7());
        let stored = old.encrypt(s, &secret("hf_abcdef")).unwrap();
        let both = vault(&format!("{new_spec},{old_spec}"));
        assert!(both.needs_rewrap(&stored));
        let rewrapped = both.rewrap(s, &stored).unwrap();
        assert!(!both.needs_rewrap(&rewrapped));
        let only_new = vault(&new_spec);
        assert_eq!(
            only_new.decrypt(s, &rewrapped).unwrap().expose_secret(),
            "hf_abcdef"
        );
    }

    #[test]
    fn bad_key_lists_are_refused_with_the_reason() {
        for (spec, needle) in [
            ("", "no key"),
            ("nokey", "id:base64key"),
            ("k1:!!!", "base64"),
            ("k1:AAAA", "32 bytes"),
            ("bad id:AAAA", "letters"),
        ] {
            let err = Vault::from_config(&SecretString::from(spec.to_owned())).unwrap_err();
            assert!(err.to_string().contains(needle), "{spec}: {err}");
        }
        let dup = format!(
            "{},{}",
            Vault::generate_key_spec("a"),
            Vault::generate_key_spec("a")
        );
        assert!(Vault::from_config(&SecretString::from(dup)).is_err());
    }
}
