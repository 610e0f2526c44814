//! The one owner of `incidents`: the problems the alerter's rules found, each with its
//! evidence, a summary, a diagnosis and at most one suggested action; open until the
//! component recovers.

use std::fmt;

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::schema::INCIDENTS;

/// The most evidence kept with an incident, in bytes of JSON.
pub const MAX_EVIDENCE_BYTES: usize = 16 * 1024;

/// What kind of problem an incident is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    /// Down until an operator enables it again (FAILED).
    Failed,
    /// Crashing again and again.
    CrashLoop,
    /// Killed by its watchdog or probe (UNHEALTHY).
    Unhealthy,
    /// Stopped, or held back, because a dependency is disabled or down.
    DependencyHalted,
    /// Killed by its own memory limit (OOM_KILLED).
    OomKilled,
    /// A metric crossed its alert threshold (a nano instance's ALERT row).
    MetricAlert,
}

impl IncidentKind {
    pub const ALL: [IncidentKind; 6] = [
        IncidentKind::Failed,
        IncidentKind::CrashLoop,
        IncidentKind::Unhealthy,
        IncidentKind::DependencyHalted,
        IncidentKind::OomKilled,
        IncidentKind::MetricAlert,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::Failed => "failed",
            IncidentKind::CrashLoop => "crash_loop",
            IncidentKind::Unhealthy => "unhealthy",
            IncidentKind::DependencyHalted => "dependency_halted",
            IncidentKind::OomKilled => "oom_killed",
            IncidentKind::MetricAlert => "metric_alert",
        }
    }

    pub fn parse(text: &str) -> Option<IncidentKind> {
        IncidentKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

impl fmt::Display for IncidentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The closed list of what an incident may suggest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SuggestedAction {
    Restart,
    Stop,
    StartDependency,
    RaiseLimit,
    None,
}

impl SuggestedAction {
    pub const ALL: [SuggestedAction; 5] = [
        SuggestedAction::Restart,
        SuggestedAction::Stop,
        SuggestedAction::StartDependency,
        SuggestedAction::RaiseLimit,
        SuggestedAction::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SuggestedAction::Restart => "restart",
            SuggestedAction::Stop => "stop",
            SuggestedAction::StartDependency => "start_dependency",
            SuggestedAction::RaiseLimit => "raise_limit",
            SuggestedAction::None => "none",
        }
    }

    pub fn parse(text: &str) -> Option<SuggestedAction> {
        SuggestedAction::ALL
            .into_iter()
            .find(|a| a.as_str() == text)
    }
}

/// One row of `incidents`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Incident {
    pub id: i64,
    pub opened_at: f64,
    pub closed_at: Option<f64>,
    pub component_id: String,
    pub kind: String,
    /// JSON text.
    pub evidence: String,
    pub summary: String,
    pub diagnosis: Option<String>,
    pub diagnosis_source: Option<String>,
    pub diagnosis_rejected: Option<String>,
    pub suggested_action: Option<String>,
    pub state: String,
}

const COLUMNS: &str = "id, opened_at, closed_at, component_id, kind, evidence, summary, diagnosis, \
                       diagnosis_source, diagnosis_rejected, suggested_action, state";

fn from_row(row: &Row<'_>) -> rusqlite::Result<Incident> {
    Ok(Incident {
        id: row.get(0)?,
        opened_at: row.get(1)?,
        closed_at: row.get(2)?,
        component_id: row.get(3)?,
        kind: row.get(4)?,
        evidence: row.get(5)?,
        summary: row.get(6)?,
        diagnosis: row.get(7)?,
        diagnosis_source: row.get(8)?,
        diagnosis_rejected: row.get(9)?,
        suggested_action: row.get(10)?,
        state: row.get(11)?,
    })
}

/// An incident about to be opened.
#[derive(Debug, Clone)]
pub struct NewIncident<'a> {
    pub opened_at: f64,
    pub component_id: &'a str,
    pub kind: IncidentKind,
    pub evidence: &'a str,
    pub summary: &'a str,
    pub diagnosis: &'a str,
    pub diagnosis_source: &'a str,
    pub suggested_action: SuggestedAction,
    pub opened_by_event: Option<i64>,
}

pub fn open(conn: &Connection, new: &NewIncident<'_>) -> rusqlite::Result<i64> {
    conn.execute(
        &format!(
            "INSERT INTO {INCIDENTS} (opened_at, component_id, kind, evidence, summary, diagnosis,
                 diagnosis_source, suggested_action, opened_by_event)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        ),
        params![
            new.opened_at,
            new.component_id,
            new.kind.as_str(),
            new.evidence,
            new.summary,
            new.diagnosis,
            new.diagnosis_source,
            new.suggested_action.as_str(),
            new.opened_by_event
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Closes an open incident; false when it was not open.
pub fn close(
    conn: &Connection,
    id: i64,
    at: f64,
    closed_by_event: Option<i64>,
) -> rusqlite::Result<bool> {
    Ok(conn.execute(
        &format!(
            "UPDATE {INCIDENTS} SET state = 'closed', closed_at = ?2, closed_by_event = ?3
             WHERE id = ?1 AND state = 'open'"
        ),
        params![id, at, closed_by_event],
    )? == 1)
}

/// Replaces the diagnosis (a model's, once checked), keeping why an earlier one was refused.
pub fn set_diagnosis(
    conn: &Connection,
    id: i64,
    diagnosis: &str,
    source: &str,
    rejected: Option<&str>,
) -> rusqlite::Result<()> {
    conn.execute(
        &format!(
            "UPDATE {INCIDENTS} SET diagnosis = ?2, diagnosis_source = ?3,
                 diagnosis_rejected = coalesce(?4, diagnosis_rejected)
             WHERE id = ?1"
        ),
        params![id, diagnosis, source, rejected],
    )?;
    Ok(())
}

/// Keeps the rules' diagnosis and records why the model's was refused.
pub fn keep_rules_diagnosis(conn: &Connection, id: i64, rejected: &str) -> rusqlite::Result<()> {
    conn.execute(
        &format!("UPDATE {INCIDENTS} SET diagnosis_rejected = ?2 WHERE id = ?1"),
        params![id, rejected],
    )?;
    Ok(())
}

pub fn get(conn: &Connection, id: i64) -> rusqlite::Result<Option<Incident>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM {INCIDENTS} WHERE id = ?1"),
        [id],
        from_row,
    )
    .optional()
}

/// The open incidents, oldest first.
pub fn open_ones(conn: &Connection) -> rusqlite::Result<Vec<Incident>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM {INCIDENTS} WHERE state = 'open' ORDER BY id"
    ))?
    .query_map([], from_row)?
    .collect()
}

/// The newest `limit` incidents, or only the open ones; newest first.
pub fn list(conn: &Connection, open_only: bool, limit: u32) -> rusqlite::Result<Vec<Incident>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM {INCIDENTS} WHERE ?1 = 0 OR state = 'open' ORDER BY id DESC LIMIT ?2"
    ))?
    .query_map(params![open_only, limit], from_row)?
    .collect()
}
