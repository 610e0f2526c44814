-- Live supervision state, written by the managers and boot and read by `n0m1ctl status`.
-- One row per supervised process; the lifecycle log stays the history, this is the present.
CREATE TABLE IF NOT EXISTS component_state (
    component_id TEXT PRIMARY KEY,
    manager TEXT NOT NULL,
    state TEXT NOT NULL,
    pid INTEGER,
    -- Start time of `pid` in clock ticks since boot (/proc/<pid>/stat field 22): with the pid
    -- it fingerprints the process, so a recycled pid is never mistaken for the component.
    pid_start_ticks INTEGER,
    started_at REAL,
    restarts INTEGER NOT NULL DEFAULT 0,
    last_exit TEXT,
    -- Set to 1 by `n0m1ctl enable`/`restart` to take a FAILED component out of that state.
    reset_requested INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_component_state_manager ON component_state (manager);
CREATE INDEX IF NOT EXISTS idx_notifications_pending ON llm_notifications (llm_id, processed, id);
