//! Integration tests: the real binaries, a temporary home, a real SQLite file.

// Test environment builder, process helpers, waiting with deadlines.
mod support;
// init_database / n0m1ctl init: schema, idempotence, upgrade of the original's database.
mod init;
// PID files under real concurrent processes.
mod pid_files;
// Managers: start, crash, restart, backoff, FAILED, enable/disable, stop, tree kill.
mod supervision;
// Boot: manager restarts, adoption, orphans, n0m1ctl start/stop/status.
mod boot;
// Metric daemons: rows, SIGTERM, held locks, no sensor, n0m1ctl metrics.
mod metrics;
// Fault injection: kills, stops, locks, garbage, permissions; end states asserted.
mod faults;
// n0m1ctl without a running system: logs -f across truncation and rotation, config check.
mod ctl;
// README rules: boot's health kill and backoff, non-critical managers, retention, stop
// --force, restart, .py components, logs boot.
mod policy;
// Generated hostile ids, launch arguments and config files (proptest) through the real
// manager and n0m1ctl.
mod hostile;
// sd_notify readiness: NOTIFY_SOCKET, READY/STATUS, sender checks, bundled daemons.
mod readiness;
// Health checks: watchdog (WATCHDOG=1) and probes from hooks/, UNHEALTHY then restart.
mod health;
// Start order: component_dependencies across managers, cycles, timeouts, reverse stops.
mod dependencies;
// Log capture through n0m1_logd: rotation, and no line lost or repeated across a manager kill.
mod logs;
// Alerts: alert_rules to webhooks and exec hooks, suppression, RECOVERED, hanging hooks.
mod alerts;
// n0m1_web: every API endpoint, hostile requests, SSE resume, fds, n0m1ctl --remote.
mod web;
// The CLI verbs restart ID, status ID, add, remove, events; resource sampling by managers.
mod verbs;
// Prometheus: promtool on a live /metrics and deploy/ rules; a real server scrapes n0m1_web.
mod prometheus;
// Actions a command asks for: proposals, the policy, approval, expiry, rate limits.
mod actions;
// Incidents: opened by the alerter's rules with evidence and a diagnosis, closed on recovery.
mod incidents;
// The dashboard in headless Chromium (fantoccini): lists, disables live, draws a graph.
mod browser;
// House rules on the source tree: no circle of imports within a crate, no table name spelled
// outside n0m1-core.
mod house;
// Resource limits: cgroups per component, OOM_KILLED, CPU and task limits, escaped trees,
// two homes apart, run as nobody, no permission.
mod limits;
// Schedules: every and cron (seconds), overlap skip, missed once, status's next run, refusals.
mod schedules;
// The stack as a file: export, apply into a fresh home, export again byte for byte; plan lists
// an edit exactly; a bad file applies nothing.
mod stack;
// Many hosts: n0m1_web over TLS on 127.0.0.2 and up, `--fleet` fan-out, pinned fingerprints,
// a real Prometheus over TLS through file_sd and a real Alertmanager.
mod fleet;
