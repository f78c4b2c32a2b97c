-- Crews: a named set of a user's agents working through an ordered list of tasks, either in
-- order (SEQUENTIAL: each task's output passed on) or under a manager agent that delegates
-- (HIERARCHICAL). The tasks are kept with the crew as one JSON array (they are always read and
-- replaced together); agent ids inside it are checked when the crew is saved and again when it
-- runs (an agent deleted since is reported then, by task).
CREATE TABLE crews (
    id               uuid PRIMARY KEY,
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name             text NOT NULL,
    description      text NOT NULL DEFAULT '',
    process          text NOT NULL CHECK (process IN ('SEQUENTIAL', 'HIERARCHICAL')),
    manager_agent_id uuid REFERENCES agents (id) ON DELETE SET NULL,
    agent_ids        uuid[] NOT NULL DEFAULT '{}',
    tasks            jsonb NOT NULL DEFAULT '[]',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX crews_user_name_key ON crews (user_id, lower(name));
CREATE INDEX crews_user_id_idx ON crews (user_id, id DESC);

-- A crew run: its tasks are ordinary executions linked by crew_run_id. The run's own row says
-- where the crew is; its heartbeat lets another instance end a crew whose process died.
CREATE TABLE crew_runs (
    id               uuid PRIMARY KEY,
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    crew_id          uuid REFERENCES crews (id) ON DELETE SET NULL,
    crew_name        text NOT NULL,
    process          text NOT NULL CHECK (process IN ('SEQUENTIAL', 'HIERARCHICAL')),
    inputs           jsonb NOT NULL DEFAULT '{}',
    status           text NOT NULL DEFAULT 'QUEUED'
                     CHECK (status IN ('QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED')),
    output           text NOT NULL DEFAULT '',
    error            text,
    cancel_requested boolean NOT NULL DEFAULT false,
    heartbeat_at     timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz
);
CREATE INDEX crew_runs_user_id_idx ON crew_runs (user_id, id DESC);
CREATE INDEX crew_runs_crew_id_idx ON crew_runs (crew_id, id DESC) WHERE crew_id IS NOT NULL;
CREATE INDEX crew_runs_unfinished_idx ON crew_runs (heartbeat_at) WHERE status IN ('QUEUED', 'RUNNING');
-- runCrew counts a user's unfinished crew runs under the user's lock.
CREATE INDEX crew_runs_user_unfinished_idx ON crew_runs (user_id) WHERE status IN ('QUEUED', 'RUNNING');

-- Which crew run an execution belongs to, and its part in it: a task (crew_task is the task's
-- index), the manager, or a delegation from the manager.
ALTER TABLE executions ADD COLUMN crew_run_id uuid REFERENCES crew_runs (id) ON DELETE SET NULL;
ALTER TABLE executions ADD COLUMN crew_role text CHECK (crew_role IN ('TASK', 'MANAGER', 'DELEGATION'));
ALTER TABLE executions ADD COLUMN crew_task integer;
ALTER TABLE executions ADD CONSTRAINT executions_crew_task_check
    CHECK ((crew_role = 'TASK') = (crew_task IS NOT NULL));
CREATE INDEX executions_crew_run_id_idx ON executions (crew_run_id, id) WHERE crew_run_id IS NOT NULL;
