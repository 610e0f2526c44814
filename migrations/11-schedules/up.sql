-- Schedules: a ONESHOT component started on time by its manager, one optional row per
-- component. spec: `every DURATION` (`every 30s`, `every 2h`) or a cron expression with
-- optional seconds (`0 */5 * * * *`, `@hourly`), in local time unless it starts with
-- `TZ=<zone> `. overlap: what a run due while the last one still runs does (`skip`, `queue`
-- one, or `kill` the old one). missed: a run due while n0m1 was down (`skip`, or run `once`).
CREATE TABLE IF NOT EXISTS component_schedules (
    component_id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    overlap TEXT NOT NULL DEFAULT 'skip',
    missed TEXT NOT NULL DEFAULT 'skip',
    modified_timestamp DATETIME DEFAULT CURRENT_TIMESTAMP
);
