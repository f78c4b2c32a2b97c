-- The per-user file workspace: uploads, and files agents' runs wrote (FILES tool). Stored in
-- PostgreSQL, so backups and restores carry them with everything else; sizes are bounded by
-- AGENTRY_FILE_MAX_BYTES and per-user quotas.
CREATE TABLE files (
    id           uuid PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The run that wrote it (null for uploads); deleting the run's agent keeps the file.
    execution_id uuid REFERENCES executions (id) ON DELETE SET NULL,
    name         text NOT NULL,
    content_type text NOT NULL,
    size         integer NOT NULL CHECK (size >= 0),
    sha256       text NOT NULL,
    content      bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX files_user_name_key ON files (user_id, lower(name));
CREATE INDEX files_user_id_idx ON files (user_id, id DESC);
CREATE INDEX files_execution_id_idx ON files (execution_id) WHERE execution_id IS NOT NULL;
