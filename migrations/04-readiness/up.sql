-- What each running component said on its notification socket (sd_notify): READY=1 and its
-- last STATUS= text. Apart from component_state so an existing database upgrades in place
-- (every migration is re-runnable: `n0m1ctl init` repairs dropped tables by running them).
CREATE TABLE IF NOT EXISTS component_readiness (
    component_id TEXT PRIMARY KEY,
    ready INTEGER NOT NULL DEFAULT 0,
    status_text TEXT,
    updated_at REAL NOT NULL
);
