-- Per-component resource history: each manager samples its running components' process trees
-- (the group the component leads and every descendant) every `resources.interval` seconds.
CREATE TABLE IF NOT EXISTS component_resource_log (
    id INTEGER PRIMARY KEY,
    component_id TEXT NOT NULL,
    manager TEXT NOT NULL,
    -- Unix time of the sample.
    sampled_at REAL NOT NULL,
    -- Resident memory of the whole tree.
    rss_bytes INTEGER NOT NULL,
    -- CPU time (user + system) used so far by the live processes of the tree.
    cpu_seconds REAL NOT NULL,
    processes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_component_resource_log_component
    ON component_resource_log (component_id, sampled_at);
CREATE INDEX IF NOT EXISTS idx_component_resource_log_time
    ON component_resource_log (sampled_at);
