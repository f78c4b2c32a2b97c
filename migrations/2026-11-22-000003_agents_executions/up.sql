-- Agents, their runs (executions), each run's append-only event log, and idempotency keys.

CREATE TABLE agents (
    id                uuid PRIMARY KEY,
    user_id           uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- A key in use cannot be deleted (the API says which agents use it; RESTRICT is the backstop).
    api_key_id        uuid NOT NULL REFERENCES api_keys (id) ON DELETE RESTRICT,
    name              text NOT NULL,
    description       text NOT NULL DEFAULT '',
    role              text NOT NULL,
    goal              text NOT NULL,
    backstory         text NOT NULL DEFAULT '',
    model             text NOT NULL,
    temperature       double precision CHECK (temperature BETWEEN 0 AND 2),
    max_output_tokens integer CHECK (max_output_tokens > 0),
    tools             text[] NOT NULL DEFAULT '{}',
    config            jsonb NOT NULL DEFAULT '{}'::jsonb,
    is_active         boolean NOT NULL DEFAULT true,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX agents_user_name_key ON agents (user_id, lower(name));
CREATE INDEX agents_user_id_idx ON agents (user_id, id DESC);
CREATE INDEX agents_api_key_id_idx ON agents (api_key_id);

CREATE TABLE executions (
    id             uuid PRIMARY KEY,
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- Deleting an agent deletes its runs and their events: no orphans.
    agent_id       uuid NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    api_key_id     uuid REFERENCES api_keys (id) ON DELETE SET NULL,
    provider       text NOT NULL,
    model          text NOT NULL,
    status         text NOT NULL DEFAULT 'QUEUED'
                   CHECK (status IN ('QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT')),
    input          text NOT NULL,
    output         text NOT NULL DEFAULT '',
    error          text,
    input_tokens   bigint NOT NULL DEFAULT 0,
    output_tokens  bigint NOT NULL DEFAULT 0,
    -- Money as integer micro-dollars.
    cost_micros    bigint NOT NULL DEFAULT 0,
    cost_estimated boolean NOT NULL DEFAULT false,
    -- Highest event sequence written so far.
    last_sequence  integer NOT NULL DEFAULT 0,
    cancel_requested boolean NOT NULL DEFAULT false,
    -- Refreshed by the runner; a stale heartbeat on an unfinished run means its process died.
    heartbeat_at   timestamptz NOT NULL DEFAULT now(),
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    finished_at    timestamptz
);
CREATE INDEX executions_user_id_idx ON executions (user_id, id DESC);
CREATE INDEX executions_agent_id_idx ON executions (agent_id, id DESC);
CREATE INDEX executions_api_key_id_idx ON executions (api_key_id, created_at);
CREATE INDEX executions_unfinished_idx ON executions (heartbeat_at) WHERE status IN ('QUEUED', 'RUNNING');

CREATE TABLE execution_events (
    execution_id uuid NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    sequence     integer NOT NULL,
    kind         text NOT NULL
                 CHECK (kind IN ('STARTED', 'OUTPUT_DELTA', 'TOOL_CALL', 'TOOL_RESULT', 'USAGE',
                                 'COMPLETED', 'FAILED', 'CANCELLED', 'TIMED_OUT')),
    delta        text,
    data         jsonb,
    at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (execution_id, sequence)
);

-- `executeAgent(idempotencyKey:)`: the same key with the same request returns the same run.
CREATE TABLE idempotency_keys (
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key          text NOT NULL,
    -- SHA-256 of the request it was first used with (agent id and input).
    request_hash bytea NOT NULL,
    execution_id uuid NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_execution_id_idx ON idempotency_keys (execution_id);
