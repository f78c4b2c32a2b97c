-- Users' LLM provider keys. The secret is stored only encrypted (see src/crypto/vault.rs); the
-- masked form (`sk-…abcd`) is kept beside it so listing keys never decrypts anything.
CREATE TABLE api_keys (
    id                uuid PRIMARY KEY,
    user_id           uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name              text NOT NULL,
    provider          text NOT NULL CHECK (provider IN ('OPENAI', 'ANTHROPIC', 'HUGGINGFACE', 'CUSTOM')),
    -- Base URL of an OpenAI-compatible server; only CUSTOM keys have one.
    endpoint          text,
    -- version | key id | nonce | ciphertext+tag, bound to (table, column, id, user_id).
    secret_ciphertext bytea NOT NULL,
    masked_key        text NOT NULL,
    is_active         boolean NOT NULL DEFAULT true,
    last_used_at      timestamptz,
    last_tested_at    timestamptz,
    last_test_ok      boolean,
    last_test_message text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT api_keys_endpoint_only_for_custom CHECK ((provider = 'CUSTOM') = (endpoint IS NOT NULL))
);
-- Names are unique per user, whatever their case.
CREATE UNIQUE INDEX api_keys_user_name_key ON api_keys (user_id, lower(name));
CREATE INDEX api_keys_user_id_idx ON api_keys (user_id);
