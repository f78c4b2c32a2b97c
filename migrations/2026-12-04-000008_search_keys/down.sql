DELETE FROM api_keys WHERE provider IN ('BRAVE', 'TAVILY');
ALTER TABLE api_keys DROP CONSTRAINT api_keys_provider_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_provider_check
    CHECK (provider IN ('OPENAI', 'ANTHROPIC', 'HUGGINGFACE', 'CUSTOM'));
