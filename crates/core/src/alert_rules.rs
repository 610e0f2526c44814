//! `alert_rules`: the one owner of the table (read by n0m1_alerts, written by `n0m1ctl apply`),
//! and the validation that turns a row into a `Rule` (or an error naming the row and the field).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::schema::ALERT_RULES;
use rusqlite::Connection;

/// A row as written.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleRow {
    pub id: i64,
    pub event_types: String,
    pub component_glob: String,
    pub action: String,
    pub target: String,
    pub min_interval_s: f64,
    pub remind_s: f64,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// An executable in `hooks/`, run without a shell.
    Exec(PathBuf),
    /// An http or https URL that receives a JSON POST.
    Webhook(String),
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub id: i64,
    pub events: Vec<String>,
    pub glob: glob::Pattern,
    pub action: Action,
    /// At most one delivery per (rule, component, event type) this often.
    pub min_interval: Duration,
    /// While a component stays FAILED, a reminder this often (none: 0).
    pub remind: Option<Duration>,
}

impl Rule {
    pub fn matches(&self, component: &str) -> bool {
        self.glob.matches(component)
    }
    pub fn wants(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == event)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{ALERT_RULES} row {rule_id}: {field}: {reason}; the rule is off until fixed")]
pub struct RuleError {
    pub rule_id: i64,
    pub field: &'static str,
    pub reason: String,
}

pub fn all(conn: &Connection) -> rusqlite::Result<Vec<RuleRow>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT id, event_types, component_glob, action, target, min_interval_s, remind_s, enabled
         FROM {ALERT_RULES} ORDER BY id"
    ))?;
    let rows = statement.query_map([], |r| {
        Ok(RuleRow {
            id: r.get(0)?,
            event_types: r.get(1)?,
            component_glob: r.get(2)?,
            action: r.get(3)?,
            target: r.get(4)?,
            min_interval_s: r.get(5)?,
            remind_s: r.get(6)?,
            enabled: r.get::<_, i64>(7)? != 0,
        })
    })?;
    rows.collect()
}

impl RuleRow {
    pub fn validate(&self, hooks_dir: &Path) -> Result<Rule, RuleError> {
        let bad = |field, reason: String| RuleError {
            rule_id: self.id,
            field,
            reason,
        };
        let events: Vec<String> = self
            .event_types
            .split(',')
            .map(|e| e.trim().to_ascii_uppercase())
            .filter(|e| !e.is_empty())
            .collect();
        if events.is_empty() {
            return Err(bad(
                "event_types",
                "names no event type (a comma list such as FAILED,RECOVERED)".into(),
            ));
        }
        if let Some(odd) = events
            .iter()
            .find(|e| !e.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
        {
            return Err(bad("event_types", format!("{odd:?} is not an event type")));
        }
        let glob = glob::Pattern::new(self.component_glob.trim())
            .map_err(|e| bad("component_glob", format!("{:?}: {e}", self.component_glob)))?;
        let action = match self.action.trim() {
            "exec" => Action::Exec(
                crate::health::hook(hooks_dir, self.target.trim())
                    .map_err(|reason| bad("target", reason))?,
            ),
            "webhook" => {
                let url = self.target.trim();
                let lower = url.to_ascii_lowercase();
                if !(lower.starts_with("http://") || lower.starts_with("https://"))
                    || url.len() < 10
                {
                    return Err(bad(
                        "target",
                        format!("{url:?} is not an http or https URL"),
                    ));
                }
                Action::Webhook(url.to_owned())
            }
            other => {
                return Err(bad("action", format!("{other:?} is not exec or webhook")));
            }
        };
        let seconds = |value: f64, field| {
            if value.is_finite() && value >= 0.0 {
                Ok(Duration::from_secs_f64(value.min(1e9)))
            } else {
                Err(bad(
                    field,
                    format!("{value} is not a non-negative number of seconds"),
                ))
            }
        };
        let min_interval = seconds(self.min_interval_s, "min_interval_s")?;
        let remind = seconds(self.remind_s, "remind_s")?;
        Ok(Rule {
            id: self.id,
            events,
            glob,
            action,
            min_interval,
            remind: (!remind.is_zero()).then_some(remind),
        })
    }
}
