-- Health checks for components that hang without exiting. With watchdog_s, the component must
-- send WATCHDOG=1 (sd_notify) at least that often; with probe, an executable in the home's
-- hooks/ folder runs every probe_interval_s (killed after probe_timeout_s), and `failures`
-- failed runs in a row count as a miss. A miss is an UNHEALTHY event, then the component's
-- group is killed and it is restarted under the normal policy.
CREATE TABLE IF NOT EXISTS component_health (
    component_id TEXT PRIMARY KEY,
    watchdog_s REAL,
    probe TEXT,
    probe_interval_s REAL NOT NULL DEFAULT 10,
    probe_timeout_s REAL NOT NULL DEFAULT 5,
    failures INTEGER NOT NULL DEFAULT 3
);
