-- Usage reports (`User.usage`) sum a user's runs over a period, grouped by day, agent, model,
-- provider or key. This index serves them with index-only scans: the user's runs in time order
-- with every column a report reads, so a year of runs is read without touching the table.
CREATE INDEX executions_user_usage_idx ON executions (user_id, created_at)
    INCLUDE (agent_id, model, provider, api_key_id, input_tokens, output_tokens, cost_micros, cost_estimated);
