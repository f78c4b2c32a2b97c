ALTER TABLE executions DROP COLUMN thread_id;
DROP TABLE threads;
