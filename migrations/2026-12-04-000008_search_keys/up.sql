-- Search API keys (Brave Search, Tavily) live in the same vault as LLM keys: the WEB_SEARCH
-- tool uses them. The inline CHECK of the first migration is named by PostgreSQL's convention.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_provider_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_provider_check
    CHECK (provider IN ('OPENAI', 'ANTHROPIC', 'HUGGINGFACE', 'CUSTOM', 'BRAVE', 'TAVILY'));
