-- Webhooks: HTTPS endpoints a user registers for events of their account. Each delivery is a
-- row of webhook_deliveries, inserted in the same transaction as the event it reports (a run's
-- end, a budget's alert, a key's rejection), so no event is lost and none is sent for a change
-- that rolled back. A dispatcher on every instance claims due deliveries with SKIP LOCKED and
-- retries failures with backoff, so deliveries survive restarts and no two instances send the
-- same attempt.
CREATE TABLE webhooks (
    id                uuid PRIMARY KEY,
    user_id           uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    url               text NOT NULL,
    description       text NOT NULL DEFAULT '',
    -- Event types (`execution.succeeded`, …) the endpoint receives.
    events            text[] NOT NULL,
    -- The signing secret (`whsec_…`), encrypted like API keys (vault, bound to this row).
    secret_ciphertext bytea NOT NULL,
    is_active         boolean NOT NULL DEFAULT true,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_user_id_idx ON webhooks (user_id);

CREATE TABLE webhook_deliveries (
    id              uuid PRIMARY KEY,             -- also the `webhook-id` header (msg id)
    webhook_id      uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    event_type      text NOT NULL,
    payload         jsonb NOT NULL,               -- the body sent, as sent on every attempt
    status          text NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'DELIVERED', 'FAILED')),
    attempt_count   integer NOT NULL DEFAULT 0,
    -- One object per attempt: {at, statusCode, error, durationMs}.
    attempts        jsonb NOT NULL DEFAULT '[]',
    -- When the next attempt is due; while an attempt is in flight, when its claim lapses.
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);
-- The dispatcher's queue: pending deliveries by due time.
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at) WHERE status = 'PENDING';
-- A webhook's deliveries, newest first.
CREATE INDEX webhook_deliveries_webhook_idx ON webhook_deliveries (webhook_id, id DESC);
CREATE INDEX webhook_deliveries_user_id_idx ON webhook_deliveries (user_id);
