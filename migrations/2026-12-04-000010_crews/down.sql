DROP INDEX IF EXISTS executions_crew_run_id_idx;
ALTER TABLE executions DROP CONSTRAINT IF EXISTS executions_crew_task_check;
ALTER TABLE executions DROP COLUMN IF EXISTS crew_task;
ALTER TABLE executions DROP COLUMN IF EXISTS crew_role;
ALTER TABLE executions DROP COLUMN IF EXISTS crew_run_id;
DROP TABLE IF EXISTS crew_runs;
DROP TABLE IF EXISTS crews;
