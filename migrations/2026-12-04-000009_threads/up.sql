-- Conversation threads: a user's multi-turn conversation with one agent. A run in a thread
-- sees the thread's earlier runs (inputs, answers, tool calls and results). Deleting a thread
-- keeps its runs in the history, unlinked.
CREATE TABLE threads (
    id               uuid PRIMARY KEY,
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    agent_id         uuid NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    title            text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_activity_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX threads_user_activity_idx ON threads (user_id, last_activity_at DESC, id DESC);

ALTER TABLE executions ADD COLUMN thread_id uuid REFERENCES threads (id) ON DELETE SET NULL;
CREATE INDEX executions_thread_id_idx ON executions (thread_id, id) WHERE thread_id IS NOT NULL;
