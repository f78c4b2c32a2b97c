-- CODE_INTERPRETER is no longer offered: nothing on this server can sandbox code, and a tool
-- that cannot run must not be listed. Agents that had it keep their other tools.
UPDATE agents SET tools = array_remove(tools, 'CODE_INTERPRETER')
WHERE 'CODE_INTERPRETER' = ANY (tools);
