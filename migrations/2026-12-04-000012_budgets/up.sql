-- Budgets: a monthly spend limit (exact micro-dollars) and/or a per-run token cap, on a user's
-- whole account (USER), one API key or one agent. A USER row with set_by_admin is the ceiling an
-- admin set for the user: the user cannot change or remove it, and it applies besides the
-- user's own USER budget.
--
-- Each budget keeps its own spend counter for the current UTC month (spent_month is the first
-- day of that month). The run that ends adds its cost to every budget that covers it, in the
-- transaction that records the cost, so the counter is exact, needs no sum at run start, and
-- deleting an agent (whose runs go with it) does not give its month's money back.
CREATE TABLE budgets (
    id                   uuid PRIMARY KEY,
    user_id              uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    scope                text NOT NULL,
    api_key_id           uuid REFERENCES api_keys (id) ON DELETE CASCADE,
    agent_id             uuid REFERENCES agents (id) ON DELETE CASCADE,
    set_by_admin         boolean NOT NULL DEFAULT false,
    monthly_limit_micros bigint CHECK (monthly_limit_micros >= 0),
    run_token_limit      bigint CHECK (run_token_limit > 0),
    spent_month          date NOT NULL,
    spent_micros         bigint NOT NULL DEFAULT 0,
    -- The highest alert (80 or 100 percent) already sent for spent_month: each goes out once.
    alerted_percent      integer NOT NULL DEFAULT 0,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT budgets_target_check CHECK (
        (scope = 'USER' AND api_key_id IS NULL AND agent_id IS NULL)
        OR (scope = 'API_KEY' AND api_key_id IS NOT NULL AND agent_id IS NULL AND NOT set_by_admin)
        OR (scope = 'AGENT' AND agent_id IS NOT NULL AND api_key_id IS NULL AND NOT set_by_admin)
    ),
    CONSTRAINT budgets_some_limit_check CHECK (monthly_limit_micros IS NOT NULL OR run_token_limit IS NOT NULL)
);

-- One budget per target and setter.
CREATE UNIQUE INDEX budgets_target_idx
    ON budgets (user_id, scope, api_key_id, agent_id, set_by_admin) NULLS NOT DISTINCT;
CREATE INDEX budgets_api_key_id_idx ON budgets (api_key_id) WHERE api_key_id IS NOT NULL;
CREATE INDEX budgets_agent_id_idx ON budgets (agent_id) WHERE agent_id IS NOT NULL;
