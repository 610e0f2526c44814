//! `component_dependencies`: the one reader of the table, its validation, cycle detection,
//! and the pure rule of when a dependency is met. Managers gate starts with it; `status` uses
//! the same functions to say what a waiting component waits for.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rusqlite::Connection;

use crate::schema::COMPONENT_DEPENDENCIES;
use crate::state::RunState;

/// What a dependency must have reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Condition {
    /// Running.
    Started,
    /// Running, and it said `READY=1`.
    Ready,
    /// A one-shot run that exited 0.
    CompletedOk,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Started => "started",
            Condition::Ready => "ready",
            Condition::CompletedOk => "completed_ok",
        }
    }

    fn parse(text: &str) -> Option<Condition> {
        match text.trim() {
            "started" => Some(Condition::Started),
            "ready" => Some(Condition::Ready),
            "completed_ok" => Some(Condition::CompletedOk),
            _ => None,
        }
    }
}

/// A row as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DependencyRow {
    pub component_id: String,
    pub depends_on: String,
    pub condition: String,
}

/// A valid dependency.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Dependency {
    pub component_id: String,
    pub depends_on: String,
    pub condition: Condition,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{COMPONENT_DEPENDENCIES} row ({component_id:?} depends on {depends_on:?}): {field}: {reason}; the row is ignored until fixed"
)]
pub struct DependencyError {
    pub component_id: String,
    pub depends_on: String,
    pub field: &'static str,
    pub reason: String,
}

/// Every row (a few).
pub fn all(conn: &Connection) -> rusqlite::Result<Vec<DependencyRow>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT component_id, depends_on, condition FROM {COMPONENT_DEPENDENCIES} ORDER BY component_id, depends_on"
    ))?;
    let rows = statement.query_map([], |r| {
        Ok(DependencyRow {
            component_id: r.get(0)?,
            depends_on: r.get(1)?,
            condition: r.get(2)?,
        })
    })?;
    rows.collect()
}

/// Adds a row unless one for the pair exists (default rows).
pub fn insert_if_missing(
    conn: &Connection,
    component_id: &str,
    depends_on: &str,
    condition: Condition,
) -> rusqlite::Result<usize> {
    conn.execute(
        &format!(
            "INSERT OR IGNORE INTO {COMPONENT_DEPENDENCIES} (component_id, depends_on, condition) VALUES (?1, ?2, ?3)"
        ),
        [component_id, depends_on, condition.as_str()],
    )
}

/// The valid rows, and an error for each invalid one (an unknown condition, a component that
/// is not in `autorun_components`, a component depending on itself).
pub fn validate(
    rows: &[DependencyRow],
    known: &BTreeSet<String>,
) -> (Vec<Dependency>, Vec<DependencyError>) {
    let mut valid = Vec::new();
    let mut errors = Vec::new();
    for row in rows {
        let bad = |field, reason: String| DependencyError {
            component_id: row.component_id.clone(),
            depends_on: row.depends_on.clone(),
            field,
            reason,
        };
        let Some(condition) = Condition::parse(&row.condition) else {
            errors.push(bad(
                "condition",
                format!(
                    "{:?} is not one of started, ready, completed_ok",
                    row.condition
                ),
            ));
            continue;
        };
        if !known.contains(&row.depends_on) {
            errors.push(bad(
                "depends_on",
                format!("no component {:?} in autorun_components", row.depends_on),
            ));
            continue;
        }
        if !known.contains(&row.component_id) {
            errors.push(bad(
                "component_id",
                format!("no component {:?} in autorun_components", row.component_id),
            ));
            continue;
        }
        valid.push(Dependency {
            component_id: row.component_id.clone(),
            depends_on: row.depends_on.clone(),
            condition,
        });
    }
    (valid, errors)
}

/// Every component that is part of a cycle, with the cycle written out (`a → b → a`).
pub fn cycles(deps: &[Dependency]) -> BTreeMap<String, String> {
    let mut edges: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for dep in deps {
        edges
            .entry(dep.component_id.as_str())
            .or_default()
            .push(dep.depends_on.as_str());
    }
    let mut in_cycle = BTreeMap::new();
    // Depth-first from each node; small graphs, so the plain search is enough.
    for start in edges.keys() {
        let mut stack: Vec<(&str, Vec<&str>)> = vec![(start, vec![start])];
        let mut seen = BTreeSet::new();
        while let Some((node, path)) = stack.pop() {
            for next in edges.get(node).into_iter().flatten() {
                if next == start {
                    let mut text = path.join(" → ");
                    text.push_str(" → ");
                    text.push_str(start);
                    for member in &path {
                        in_cycle
                            .entry((*member).to_owned())
                            .or_insert_with(|| text.clone());
                    }
                } else if seen.insert(*next) {
                    let mut longer = path.clone();
                    longer.push(next);
                    stack.push((next, longer));
                }
            }
        }
    }
    in_cycle
}

/// What a manager knows of a dependency: its recorded state and readiness, and whether the
/// recorded process is still the live one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub state: RunState,
    pub ready: bool,
    /// Its exit was clean (a one-shot's `completed`).
    pub exited_ok: bool,
}

impl Standing {
    /// A component's standing from its recorded state. Recorded running, but its process is
    /// gone (its manager died with it unwatched): down, neither a met dependency nor a
    /// dependent to wait for.
    pub fn of(saved: &crate::state::ComponentState) -> Standing {
        let live = match (saved.pid, saved.pid_start_ticks) {
            (Some(pid), Some(ticks)) => crate::process::is_same_process(pid, ticks),
            _ => false,
        };
        let state = match saved.state {
            RunState::Running | RunState::Stopping if !live => RunState::Dead,
            state => state,
        };
        Standing {
            state,
            ready: saved.ready,
            // `completed` is only ever a one-shot's clean exit.
            exited_ok: saved.state == RunState::Completed,
        }
    }
}

/// True when `standing` meets `condition`.
pub fn met(condition: Condition, standing: Option<&Standing>) -> bool {
    let Some(standing) = standing else {
        return false;
    };
    match condition {
        Condition::Started => standing.state == RunState::Running,
        Condition::Ready => standing.state == RunState::Running && standing.ready,
        Condition::CompletedOk => standing.state == RunState::Completed && standing.exited_ok,
    }
}

/// Whether component `id` may start: `None` when every dependency is met, else what it waits
/// for (`cpu_usage_daemon (ready), llm_config_daemon (started)`).
pub fn waiting_for(
    id: &str,
    deps: &[Dependency],
    standings: &HashMap<String, Standing>,
) -> Option<String> {
    let unmet: Vec<String> = deps
        .iter()
        .filter(|d| d.component_id == id && !met(d.condition, standings.get(&d.depends_on)))
        .map(|d| format!("{} ({})", d.depends_on, d.condition.as_str()))
        .collect();
    (!unmet.is_empty()).then(|| unmet.join(", "))
}

/// The components that depend on `id`.
pub fn dependents<'a>(id: &str, deps: &'a [Dependency]) -> impl Iterator<Item = &'a str> + use<'a> {
    let id = id.to_owned();
    deps.iter()
        .filter(move |d| d.depends_on == id)
        .map(|d| d.component_id.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(a: &str, b: &str, condition: &str) -> DependencyRow {
        DependencyRow {
            component_id: a.into(),
            depends_on: b.into(),
            condition: condition.into(),
        }
    }

    fn known(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn rows_are_validated_and_cycles_named() {
        let rows = [
            dep("nano", "daemon", "ready"),
            dep("a", "b", "started"),
            dep("b", "c", "started"),
            dep("c", "a", "completed_ok"),
            dep("x", "ghost", "started"),
            dep("x", "daemon", "whenever"),
        ];
        let (valid, errors) = validate(&rows, &known(&["nano", "daemon", "a", "b", "c", "x"]));
        assert_eq!(valid.len(), 4);
        let fields: Vec<&str> = errors.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["depends_on", "condition"]);
        assert!(
            errors[1].to_string().contains("\"whenever\" is not one of"),
            "{}",
            errors[1]
        );
        let cycles = cycles(&valid);
        assert_eq!(cycles.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(cycles["a"], "a → b → c → a");
        assert!(!cycles.contains_key("nano"));
        // Self-dependency is a cycle of one.
        let (valid, _) = validate(&[dep("s", "s", "started")], &known(&["s"]));
        assert_eq!(cycles_of(&valid), ["s → s"]);
    }

    fn cycles_of(deps: &[Dependency]) -> Vec<String> {
        cycles(deps).into_values().collect()
    }

    #[test]
    fn conditions_are_met_by_the_dependency_standing() {
        let standing = |state, ready, exited_ok| Standing {
            state,
            ready,
            exited_ok,
        };
        let running = standing(RunState::Running, false, false);
        let ready = standing(RunState::Running, true, false);
        let done = standing(RunState::Completed, false, true);
        assert!(met(Condition::Started, Some(&running)));
        assert!(!met(Condition::Ready, Some(&running)));
        assert!(met(Condition::Ready, Some(&ready)));
        assert!(met(Condition::CompletedOk, Some(&done)));
        assert!(!met(
            Condition::CompletedOk,
            Some(&standing(RunState::Failed, false, false))
        ));
        assert!(!met(Condition::Started, None));
        let (deps, _) = validate(
            &[dep("n", "d", "ready"), dep("n", "c", "started")],
            &known(&["n", "d", "c"]),
        );
        let mut standings = HashMap::from([("d".to_owned(), running)]);
        assert_eq!(
            waiting_for("n", &deps, &standings).as_deref(),
            Some("d (ready), c (started)")
        );
        standings.insert("d".into(), ready);
        standings.insert("c".into(), running);
        assert_eq!(waiting_for("n", &deps, &standings), None);
        assert_eq!(dependents("d", &deps).collect::<Vec<_>>(), ["n"]);
    }
}
