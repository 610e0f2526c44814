-- Alerts: rules matched against the lifecycle log by n0m1_alerts, and what became of each.
CREATE TABLE IF NOT EXISTS alert_rules (
    id INTEGER PRIMARY KEY,
    -- A comma list: FAILED, CRASHED, UNHEALTHY, NO_SENSOR, MANAGER_CRASHED, RECOVERED, ...
    event_types TEXT NOT NULL,
    component_glob TEXT NOT NULL DEFAULT '*',
    -- 'exec' (an executable in the home's hooks/) or 'webhook' (an http or https URL).
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    min_interval_s REAL NOT NULL DEFAULT 300,
    remind_s REAL NOT NULL DEFAULT 3600,
    enabled INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS alert_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    rule_id INTEGER NOT NULL,
    component_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    -- delivered, failed, or suppressed (counted into the next delivery).
    outcome TEXT NOT NULL,
    detail TEXT,
    suppressed INTEGER NOT NULL DEFAULT 0
);
-- The last lifecycle row n0m1_alerts has looked at, so a restart neither repeats nor skips.
CREATE TABLE IF NOT EXISTS alert_cursor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_event_id INTEGER NOT NULL
);
