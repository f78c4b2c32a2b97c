DROP INDEX IF EXISTS executions_user_usage_idx;
