//! `component_state`: the present state of every supervised process, one row each.
//!
//! Managers write it on every transition; `n0m1ctl status` reads it and checks each pid
//! against /proc before believing it. The lifecycle log is the history; this is the now.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::schema::{COMPONENT_READINESS, COMPONENT_STATE};

/// What a supervised component is doing, as its manager sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunState {
    /// Running under its manager (a spawn in flight counts: the manager answers it in the
    /// same turn).
    Running,
    /// SIGTERM sent, waiting for it to exit.
    Stopping,
    /// Not running, as desired.
    Stopped,
    /// Desired running, held back until its dependencies meet their conditions.
    Waiting,
    /// Died quickly; waiting out a backoff before the next start.
    Backoff,
    /// Died quickly too often, or cannot be started: down until enabled again.
    Failed,
    /// A one-shot run that finished cleanly.
    Completed,
    /// A scheduled one-shot between runs: it starts at its next time.
    Scheduled,
    /// Shown by `status`, never written by a manager: the recorded process is alive but no
    /// manager of its affinity is running.
    Unsupervised,
    /// Shown by `status`, never written by a manager: the recorded process is gone and no
    /// manager noticed (its manager is down).
    Dead,
}

impl RunState {
    /// Every state, in the order they are listed above.
    pub const ALL: &'static [RunState] = &[
        RunState::Running,
        RunState::Stopping,
        RunState::Stopped,
        RunState::Waiting,
        RunState::Backoff,
        RunState::Failed,
        RunState::Completed,
        RunState::Scheduled,
        RunState::Unsupervised,
        RunState::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Stopping => "stopping",
            RunState::Stopped => "stopped",
            RunState::Waiting => "waiting",
            RunState::Backoff => "backoff",
            RunState::Failed => "failed",
            RunState::Completed => "completed",
            RunState::Scheduled => "scheduled",
            RunState::Unsupervised => "unsupervised",
            RunState::Dead => "dead",
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "running" => RunState::Running,
            "stopping" => RunState::Stopping,
            "stopped" => RunState::Stopped,
            "waiting" => RunState::Waiting,
            "backoff" => RunState::Backoff,
            "failed" => RunState::Failed,
            "completed" => RunState::Completed,
            "scheduled" => RunState::Scheduled,
            "unsupervised" => RunState::Unsupervised,
            "dead" => RunState::Dead,
            other => return Err(format!("unknown run state {other:?}")),
        })
    }
}

/// One row of `component_state`.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentState {
    pub component_id: String,
    pub manager: String,
    pub state: RunState,
    pub pid: Option<i32>,
    pub pid_start_ticks: Option<u64>,
    /// Unix time (seconds) at which the current process started.
    pub started_at: Option<f64>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    /// What an operator asked of its manager and the manager has not yet acknowledged.
    pub request: Option<Request>,
    /// The process said `READY=1` (sd_notify).
    pub ready: bool,
    /// Its last `STATUS=` text.
    pub status_text: Option<String>,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

const COLUMNS: &str = "s.component_id, s.manager, s.state, s.pid, s.pid_start_ticks, s.started_at, s.restarts, s.last_exit, s.reset_requested, coalesce(r.ready, 0), r.status_text";

/// The state row with what the process said of its readiness.
fn from_clause() -> String {
    format!("{COMPONENT_STATE} s LEFT JOIN {COMPONENT_READINESS} r USING (component_id)")
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<ComponentState> {
    let state: String = row.get(2)?;
    Ok(ComponentState {
        component_id: row.get(0)?,
        manager: row.get(1)?,
        state: state.parse().unwrap_or(RunState::Stopped),
        pid: row.get(3)?,
        pid_start_ticks: row.get::<_, Option<i64>>(4)?.map(|t| t as u64),
        started_at: row.get(5)?,
        restarts: row.get::<_, i64>(6)?.max(0) as u32,
        last_exit: row.get(7)?,
        request: Request::from_code(row.get(8)?),
        ready: row.get::<_, i64>(9)? != 0,
        status_text: row.get(10)?,
    })
}

impl ComponentState {
    /// Inserts or replaces the row; the request column (`reset_requested`) is left as the
    /// operator set it.
    pub fn save(&self, conn: &Connection) -> rusqlite::Result<()> {
        conn.prepare_cached(&format!(
            "INSERT INTO {COMPONENT_STATE}
             (component_id, manager, state, pid, pid_start_ticks, started_at, restarts, last_exit, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (component_id) DO UPDATE SET
               manager = excluded.manager, state = excluded.state, pid = excluded.pid,
               pid_start_ticks = excluded.pid_start_ticks, started_at = excluded.started_at,
               restarts = excluded.restarts, last_exit = excluded.last_exit,
               updated_at = excluded.updated_at"
        ))?
        .execute(params![
            self.component_id,
            self.manager,
            self.state.as_str(),
            self.pid,
            self.pid_start_ticks.map(|t| t as i64),
            self.started_at,
            self.restarts,
            self.last_exit,
            unix_now()
        ])?;
        conn.prepare_cached(&format!(
            "INSERT INTO {COMPONENT_READINESS} (component_id, ready, status_text, updated_at)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (component_id) DO UPDATE SET
               ready = excluded.ready, status_text = excluded.status_text,
               updated_at = excluded.updated_at"
        ))?
        .execute(params![
            self.component_id,
            self.ready,
            self.status_text,
            unix_now()
        ])?;
        Ok(())
    }
}

pub fn load(conn: &Connection, component_id: &str) -> rusqlite::Result<Option<ComponentState>> {
    conn.query_row(
        &format!(
            "SELECT {COLUMNS} FROM {} WHERE s.component_id = ?1",
            from_clause()
        ),
        [component_id],
        from_row,
    )
    .optional()
}

/// All rows, or those of one manager.
pub fn load_all(conn: &Connection, manager: Option<&str>) -> rusqlite::Result<Vec<ComponentState>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM {} WHERE ?1 IS NULL OR s.manager = ?1 ORDER BY s.component_id",
        from_clause()
    ))?;
    let rows = statement.query_map([manager], from_row)?;
    rows.collect()
}

/// An operator's request to a component's manager, kept in `component_state.reset_requested`
/// (0 none, 1 reset, 2 restart) until the manager acknowledges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Request {
    /// Take a FAILED or COMPLETED component out of that state (`n0m1ctl enable`).
    Reset,
    /// Stop the running process and start it again, desired state unchanged (`n0m1ctl
    /// restart`); a failed, completed or backing-off component starts at once.
    Restart,
}

impl Request {
    fn code(self) -> i64 {
        match self {
            Request::Reset => 1,
            Request::Restart => 2,
        }
    }
    fn from_code(code: i64) -> Option<Request> {
        match code {
            0 => None,
            2 => Some(Request::Restart),
            _ => Some(Request::Reset),
        }
    }
}

/// Asks the owning manager to take a FAILED component out of that state (`n0m1ctl enable`).
pub fn request_reset(conn: &Connection, component_id: &str) -> rusqlite::Result<()> {
    request(conn, component_id, Request::Reset).map(|_| ())
}

/// Files `request` for the component; a restart supersedes a pending reset, never the reverse.
/// False when the component has no state row (it never ran under this database).
pub fn request(conn: &Connection, component_id: &str, request: Request) -> rusqlite::Result<bool> {
    let changed = conn.execute(
        &format!(
            "UPDATE {COMPONENT_STATE} SET reset_requested = max(reset_requested, ?2)
             WHERE component_id = ?1"
        ),
        rusqlite::params![component_id, request.code()],
    )?;
    Ok(changed > 0)
}

/// The manager acknowledges `request`; a request filed since it was read (a restart after
/// a reset) stays for the next pass.
pub fn clear_request(
    conn: &Connection,
    component_id: &str,
    request: Request,
) -> rusqlite::Result<()> {
    conn.execute(
        &format!(
            "UPDATE {COMPONENT_STATE} SET reset_requested = 0
             WHERE component_id = ?1 AND reset_requested = ?2"
        ),
        rusqlite::params![component_id, request.code()],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_and_reset_round_trip() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::schema::migrations().to_latest(&mut conn).unwrap();
        let mut row = ComponentState {
            component_id: "x".into(),
            manager: "daemon_manager".into(),
            state: RunState::Running,
            pid: Some(12),
            pid_start_ticks: Some(345),
            started_at: Some(1.5),
            restarts: 2,
            last_exit: Some("signal SIGKILL".into()),
            request: None,
            ready: true,
            status_text: Some("serving 3 tables".into()),
        };
        row.save(&conn).unwrap();
        assert_eq!(load(&conn, "x").unwrap().as_ref(), Some(&row));
        request_reset(&conn, "x").unwrap();
        row.state = RunState::Failed;
        row.save(&conn).unwrap();
        let loaded = load(&conn, "x").unwrap().unwrap();
        assert_eq!(
            loaded.request,
            Some(Request::Reset),
            "save keeps the operator's reset request"
        );
        // A restart filed after the reset was read survives the reset's acknowledgement.
        assert!(request(&conn, "x", Request::Restart).unwrap());
        request_reset(&conn, "x").unwrap();
        clear_request(&conn, "x", Request::Reset).unwrap();
        let pending = load(&conn, "x").unwrap().unwrap().request;
        assert_eq!(pending, Some(Request::Restart));
        clear_request(&conn, "x", Request::Restart).unwrap();
        assert_eq!(load(&conn, "x").unwrap().unwrap().request, None);
        assert!(!request(&conn, "never_ran", Request::Restart).unwrap());
        assert_eq!(load_all(&conn, Some("nano_manager")).unwrap().len(), 0);
        assert_eq!(load_all(&conn, None).unwrap().len(), 1);
    }

    #[test]
    fn states_round_trip() {
        for &state in RunState::ALL {
            assert_eq!(state.as_str().parse::<RunState>().unwrap(), state);
        }
    }
}
