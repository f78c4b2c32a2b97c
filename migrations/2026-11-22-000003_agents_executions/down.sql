DROP TABLE idempotency_keys;
DROP TABLE execution_events;
DROP TABLE executions;
DROP TABLE agents;
