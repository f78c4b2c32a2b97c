-- OAuth sign-in and linked accounts (Google, GitHub, Microsoft).

-- One row per `startOAuth`: the one-time `state` of an authorization code flow with PKCE.
-- Only a SHA-256 of the state is kept (like refresh tokens), and the PKCE verifier is a secret:
-- it is stored only through the vault, bound to (table, column, row id, user id or nil).
CREATE TABLE oauth_states (
    id                       uuid PRIMARY KEY,
    state_hash               bytea NOT NULL UNIQUE,
    provider                 text NOT NULL CHECK (provider IN ('GOOGLE', 'GITHUB', 'MICROSOFT')),
    intent                   text NOT NULL CHECK (intent IN ('LOGIN', 'LINK')),
    -- The signed-in user who asked to link an account; null for LOGIN.
    user_id                  uuid REFERENCES users (id) ON DELETE CASCADE,
    -- version | key id | nonce | ciphertext+tag of the PKCE code verifier.
    pkce_verifier_ciphertext bytea NOT NULL,
    -- The frontend callback the provider redirects to; the token request must repeat it.
    redirect_uri             text NOT NULL,
    expires_at               timestamptz NOT NULL,
    -- Set when the state is consumed: a state works once.
    used_at                  timestamptz,
    created_at               timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT oauth_states_link_has_user CHECK ((intent = 'LINK') = (user_id IS NOT NULL))
);
CREATE INDEX oauth_states_user_id_idx ON oauth_states (user_id);
-- Expired states are pruned by `startOAuth`.
CREATE INDEX oauth_states_expires_at_idx ON oauth_states (expires_at);

-- A provider account linked to an Agentry user. The provider's stable subject id identifies
-- it (Google `sub`, GitHub numeric id, Microsoft `<tid>:<oid>`), never the email.
CREATE TABLE oauth_accounts (
    id                       uuid PRIMARY KEY,
    user_id                  uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider                 text NOT NULL CHECK (provider IN ('GOOGLE', 'GITHUB', 'MICROSOFT')),
    subject                  text NOT NULL,
    -- The provider's verified email when last seen (informational, not an identifier).
    email                    text,
    -- Tokens are stored only through the vault (see src/crypto/vault.rs).
    access_token_ciphertext  bytea NOT NULL,
    refresh_token_ciphertext bytea,
    -- When the access token expires, if the provider said.
    expires_at               timestamptz,
    -- False once the provider revoked the grant (refresh answered invalid_grant).
    is_connected             boolean NOT NULL DEFAULT true,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT oauth_accounts_provider_subject_key UNIQUE (provider, subject)
);
CREATE INDEX oauth_accounts_user_id_idx ON oauth_accounts (user_id);
