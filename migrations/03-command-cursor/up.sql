-- Where llm_command_daemon stopped reading llm_outputs, so each CMD: row is handled exactly
-- once across restarts without deleting model output (the original deleted the rows).
CREATE TABLE IF NOT EXISTS llm_command_cursor (
    daemon_id TEXT PRIMARY KEY,
    last_output_id INTEGER NOT NULL
);
