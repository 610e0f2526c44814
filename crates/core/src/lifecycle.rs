//! Lifecycle events: the one enum of every `event_type` the system writes, and the one
//! function that writes a row of `component_lifecycle_log`. `n0m1ctl status` reads the same
//! type back, so a writer and a reader can never disagree on a spelling.

use std::fmt;
use std::str::FromStr;

use rusqlite::{Connection, params};

use crate::schema::COMPONENT_LIFECYCLE_LOG;

macro_rules! lifecycle_events {
    ($($(#[$doc:meta])* $variant:ident = $text:literal,)*) => {
        /// A value of `component_lifecycle_log.event_type`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum LifecycleEvent { $($(#[$doc])* $variant,)* }

        impl LifecycleEvent {
            pub const ALL: &'static [LifecycleEvent] = &[$(LifecycleEvent::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self { $(LifecycleEvent::$variant => $text,)* }
            }
        }

        impl FromStr for LifecycleEvent {
            type Err = String;
            fn from_str(text: &str) -> Result<Self, String> {
                match text {
                    $($text => Ok(LifecycleEvent::$variant),)*
                    other => Err(format!("unknown lifecycle event {other:?}")),
                }
            }
        }
    };
}

lifecycle_events! {
    /// A manager is about to spawn the component.
    StartAttempt = "START_ATTEMPT",
    /// The component is up; written by the manager after spawning, and by the component
    /// itself with its own pid once it is ready.
    StartedSuccessfully = "STARTED_SUCCESSFULLY",
    /// The component said `READY=1` on its notification socket (sd_notify).
    Ready = "READY",
    /// A running component missed its watchdog or failed its probe: its group is killed and
    /// it is restarted under the normal policy.
    Unhealthy = "UNHEALTHY",
    /// The component could not be started (bad script, bad arguments, spawn error).
    StartFailed = "START_FAILED",
    /// A stop was asked for (desired state inactive, shutdown, or a changed row).
    StopRequested = "STOP_REQUESTED",
    /// The component exited within the grace period after SIGTERM.
    StoppedSuccessfully = "STOPPED_SUCCESSFULLY",
    /// The component had to be killed with SIGKILL.
    StoppedForcefully = "STOPPED_FORCEFULLY",
    /// The component survived SIGKILL (uninterruptible sleep): it is left for the operator.
    StopFailed = "STOP_FAILED",
    /// A component says it is exiting (on SIGTERM), or a one-shot run ended cleanly.
    Stopped = "STOPPED",
    /// The component exited on its own with a non-zero code or a signal.
    Crashed = "CRASHED",
    /// A persistent component exited on its own with code 0.
    Exited = "EXITED",
    /// After a quick death, a restart is scheduled after a backoff delay.
    RestartScheduled = "RESTART_SCHEDULED",
    /// Too many quick deaths in a row: the component stays down until enabled again.
    Failed = "FAILED",
    /// A restarted manager took back a component that was still running.
    Adopted = "ADOPTED",
    /// An operator reset a failed component (`n0m1ctl enable` or `restart`).
    Reset = "RESET",
    /// Boot started a manager.
    ManagerStarted = "MANAGER_STARTED",
    /// A manager exited while boot wanted it running.
    ManagerCrashed = "MANAGER_CRASHED",
    /// Boot asked a manager to stop.
    ManagerShutdownRequested = "MANAGER_SHUTDOWN_REQUESTED",
    /// A manager exited after boot asked it to stop.
    ManagerStopped = "MANAGER_STOPPED",
    /// A manager's heartbeat went stale.
    ManagerUnhealthy = "MANAGER_UNHEALTHY",
    /// A component or manager reports an error it recovered from.
    Error = "ERROR",
    /// A component or manager reports an error it cannot recover from.
    CriticalError = "CRITICAL_ERROR",
    /// A metric daemon found no sensor for what it measures.
    NoSensor = "NO_SENSOR",
    /// A model component could not load its model and serves without it.
    ModelUnavailable = "MODEL_UNAVAILABLE",
    /// A model component has its model again (the model service answered after an outage).
    ModelAvailable = "MODEL_AVAILABLE",
    /// The model service loaded a model for its first client.
    ModelLoaded = "MODEL_LOADED",
    /// The model service freed a model its last client stopped using.
    ModelReleased = "MODEL_RELEASED",
    /// The command daemon refused a `CMD:` line.
    CommandRejected = "COMMAND_REJECTED",
    /// Boot or a component re-read its configuration.
    ConfigReloaded = "CONFIG_RELOADED",
    /// The component was killed by its own memory limit (its cgroup's OOM killer); the
    /// restart policy then applies as to any crash.
    OomKilled = "OOM_KILLED",
    /// Resource limits cannot be enforced here (no cgroup permission or controller); the
    /// component runs without them. Said once per manager start.
    LimitsUnavailable = "LIMITS_UNAVAILABLE",
    /// A component's limits were applied to its running process (no restart).
    LimitsApplied = "LIMITS_APPLIED",
    /// A command became a proposal that waits for an operator (`n0m1ctl proposals`).
    ActionProposed = "ACTION_PROPOSED",
    /// An approved (or automatic) action ran and its effect followed.
    ActionExecuted = "ACTION_EXECUTED",
    /// An approved (or automatic) action ran and its effect did not follow.
    ActionFailed = "ACTION_FAILED",
    /// A nano instance's metric crossed its alert threshold (its `ALERT:` row).
    MetricAlert = "METRIC_ALERT",
    /// The metric fell back below the threshold's clear margin (its `RECOVERED:` row).
    MetricRecovered = "METRIC_RECOVERED",
    /// The rules opened an incident for the component (`incidents`).
    IncidentOpened = "INCIDENT_OPENED",
    /// The component recovered: its open incident is closed.
    IncidentClosed = "INCIDENT_CLOSED",
    /// A scheduled component was started on its schedule (or once after a missed run, or by
    /// an operator's restart); the message says why and when it runs next.
    ScheduledStart = "SCHEDULED_START",
    /// A scheduled run fell due while the last one still ran (`overlap skip`): not run.
    SkippedOverlap = "SKIPPED_OVERLAP",
    /// The log writer could not write a log file for want of space: lines are dropped and
    /// counted until space returns. Said once per episode.
    DiskFull = "DISK_FULL",
    /// The log writer wrote again after `DISK_FULL`; the message says how many bytes were
    /// dropped meanwhile.
    DiskFullCleared = "DISK_FULL_CLEARED",
}

impl LifecycleEvent {
    /// Events `n0m1ctl status --detailed` lists as recent errors.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            LifecycleEvent::Error
                | LifecycleEvent::CriticalError
                | LifecycleEvent::StopFailed
                | LifecycleEvent::ManagerCrashed
                | LifecycleEvent::StartFailed
                | LifecycleEvent::Crashed
                | LifecycleEvent::Failed
                | LifecycleEvent::ManagerUnhealthy
                | LifecycleEvent::CommandRejected
                | LifecycleEvent::ModelUnavailable
                | LifecycleEvent::OomKilled
                | LifecycleEvent::LimitsUnavailable
                | LifecycleEvent::DiskFull
        )
    }
}

impl fmt::Display for LifecycleEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of `component_lifecycle_log`, owned, so a supervisor can queue it and write it
/// after the work it describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleRecord {
    pub component_id: String,
    pub event: LifecycleEvent,
    pub pid: Option<i32>,
    pub run_type: Option<String>,
    pub message: Option<String>,
    pub manager_script: Option<String>,
    pub script_path: Option<String>,
    /// When it happened (Unix seconds), when known before the row is written: a row queued
    /// while the database is locked or the disk full carries the time of its event, not of
    /// its write. `None`: the time of the write.
    pub at: Option<i64>,
}

impl LifecycleRecord {
    pub fn new(component_id: impl Into<String>, event: LifecycleEvent) -> Self {
        LifecycleRecord {
            component_id: component_id.into(),
            event,
            pid: None,
            run_type: None,
            message: None,
            manager_script: None,
            script_path: None,
            at: None,
        }
    }
    /// Stamps the record with the time of its event (the writer does, when it queues it).
    pub fn at(mut self, unix_seconds: i64) -> Self {
        self.at = Some(unix_seconds);
        self
    }
    pub fn pid(mut self, pid: i32) -> Self {
        self.pid = Some(pid);
        self
    }
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }
    pub fn run_type(mut self, run_type: impl Into<String>) -> Self {
        self.run_type = Some(run_type.into());
        self
    }
    pub fn manager(mut self, manager_script: impl Into<String>) -> Self {
        self.manager_script = Some(manager_script.into());
        self
    }
    pub fn script_path(mut self, script_path: impl Into<String>) -> Self {
        self.script_path = Some(script_path.into());
        self
    }

    /// Writes the row; returns its id.
    pub fn write(&self, conn: &Connection) -> rusqlite::Result<i64> {
        let event = self.event.as_str();
        let mut statement = conn.prepare_cached(&format!(
            "INSERT INTO {COMPONENT_LIFECYCLE_LOG}
             (component_id, process_pid, event_type, run_type, message, manager_script, script_path,
              event_timestamp)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, coalesce(datetime(?8, 'unixepoch'), CURRENT_TIMESTAMP))"
        ))?;
        statement.execute(params![
            self.component_id,
            self.pid,
            event,
            self.run_type,
            self.message,
            self.manager_script,
            self.script_path,
            self.at
        ])?;
        Ok(conn.last_insert_rowid())
    }
}

/// A row read back from the log (`id` is its row id); as `n0m1ctl events` and `n0m1_web`
/// show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoggedEvent {
    pub id: i64,
    pub timestamp: String,
    pub component_id: String,
    pub pid: Option<i32>,
    /// Unknown spellings (written by other tools) are kept as text.
    pub event_type: String,
    pub message: Option<String>,
}

impl LoggedEvent {
    pub fn event(&self) -> Option<LifecycleEvent> {
        self.event_type.parse().ok()
    }
}

/// The most recent events, newest first; `errors_only` keeps those `is_error` accepts.
pub fn recent(
    conn: &Connection,
    limit: usize,
    errors_only: bool,
) -> rusqlite::Result<Vec<LoggedEvent>> {
    let filter = if errors_only {
        let list: Vec<String> = LifecycleEvent::ALL
            .iter()
            .filter(|e| e.is_error())
            .map(|e| format!("'{}'", e.as_str()))
            .collect();
        format!("WHERE event_type IN ({})", list.join(","))
    } else {
        String::new()
    };
    let mut statement = conn.prepare(&format!(
        "SELECT id, event_timestamp, component_id, process_pid, event_type, message
         FROM {COMPONENT_LIFECYCLE_LOG} {filter} ORDER BY id DESC LIMIT ?1"
    ))?;
    let rows = statement.query_map([limit as i64], logged_event)?;
    rows.collect()
}

/// A row of `SELECT id, event_timestamp, component_id, process_pid, event_type, message`.
fn logged_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<LoggedEvent> {
    Ok(LoggedEvent {
        id: row.get(0)?,
        timestamp: row.get(1)?,
        component_id: row.get(2)?,
        pid: row.get(3)?,
        event_type: row.get(4)?,
        message: row.get(5)?,
    })
}

/// Events after row `after_id`, oldest first, at most `limit`.
pub fn after(conn: &Connection, after_id: i64, limit: usize) -> rusqlite::Result<Vec<LoggedEvent>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT id, event_timestamp, component_id, process_pid, event_type, message
         FROM {COMPONENT_LIFECYCLE_LOG} WHERE id > ?1 ORDER BY id LIMIT ?2"
    ))?;
    let rows = statement.query_map(rusqlite::params![after_id, limit as i64], logged_event)?;
    rows.collect()
}

/// Events after row `after_id`, of one component or all, oldest first: the first `limit`
/// of them, or with `newest` the last `limit` (a tail).
pub fn page(
    conn: &Connection,
    after_id: i64,
    component_id: Option<&str>,
    limit: usize,
    newest: bool,
) -> rusqlite::Result<Vec<LoggedEvent>> {
    let order = if newest { "DESC" } else { "ASC" };
    let mut statement = conn.prepare_cached(&format!(
        "SELECT id, event_timestamp, component_id, process_pid, event_type, message
         FROM {COMPONENT_LIFECYCLE_LOG}
         WHERE id > ?1 AND (?2 IS NULL OR component_id = ?2) ORDER BY id {order} LIMIT ?3"
    ))?;
    let rows = statement.query_map(
        rusqlite::params![after_id, component_id, limit as i64],
        logged_event,
    )?;
    let mut events = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    if newest {
        events.reverse();
    }
    Ok(events)
}

/// Deletes events older than `age_secs` (the retention age), `batch` rows at a time.
pub fn prune(conn: &Connection, age_secs: i64, batch: usize) -> rusqlite::Result<usize> {
    crate::db::prune_older_than(
        conn,
        COMPONENT_LIFECYCLE_LOG,
        "event_timestamp",
        age_secs,
        batch,
    )
}

/// How many events of type `event` each component has in the log (`/metrics`' OOM kills).
pub fn count_by_component(
    conn: &Connection,
    event: LifecycleEvent,
) -> rusqlite::Result<std::collections::HashMap<String, u64>> {
    conn.prepare_cached(&format!(
        "SELECT component_id, count(*) FROM {COMPONENT_LIFECYCLE_LOG} WHERE event_type = ?1 GROUP BY component_id"
    ))?
    .query_map([event.as_str()], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
    .collect()
}

/// The newest row's id (0 for an empty log).
pub fn last_id(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        &format!("SELECT coalesce(max(id), 0) FROM {COMPONENT_LIFECYCLE_LOG}"),
        [],
        |r| r.get(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema;

    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        schema::migrations().to_latest(&mut conn).unwrap();
        conn
    }

    #[test]
    fn every_event_round_trips() {
        for event in LifecycleEvent::ALL {
            assert_eq!(event.as_str().parse::<LifecycleEvent>().unwrap(), *event);
        }
        assert!("NOPE".parse::<LifecycleEvent>().is_err());
    }

    #[test]
    fn spec_error_events_are_errors() {
        for text in ["ERROR", "CRITICAL_ERROR", "STOP_FAILED", "MANAGER_CRASHED"] {
            assert!(text.parse::<LifecycleEvent>().unwrap().is_error(), "{text}");
        }
        assert!(!LifecycleEvent::StartedSuccessfully.is_error());
    }

    #[test]
    fn write_then_read_back() {
        let conn = db();
        LifecycleRecord::new("cpu_usage_daemon", LifecycleEvent::StartAttempt)
            .write(&conn)
            .unwrap();
        LifecycleRecord::new("cpu_usage_daemon", LifecycleEvent::Crashed)
            .pid(42)
            .message("exit code 3")
            .manager("daemon_manager")
            .write(&conn)
            .unwrap();
        let all = recent(&conn, 10, false).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(
            all[0].event(),
            Some(LifecycleEvent::Crashed),
            "newest first"
        );
        assert_eq!(all[0].pid, Some(42));
        let errors = recent(&conn, 10, true).unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].message.as_deref(), Some("exit code 3"));
    }
}
