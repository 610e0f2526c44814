//! Reads `component_dependencies` and the states of what this manager's components depend on
//! (in any manager) and turns them into each component's `Gate`; reports bad rows once.

use std::collections::{BTreeSet, HashMap, HashSet};

use n0m1_core::components;
use n0m1_core::dependencies::{self, Standing};
use n0m1_core::lifecycle::{LifecycleEvent, LifecycleRecord};
use n0m1_core::pidfile::{PidFile, PidStatus};
use n0m1_core::state::{self, RunState};
use rusqlite::Connection;

use super::Manager;
use crate::machine::Gate;

/// Every valid dependency, the cycles, and each component's standing, read in one go.
pub(super) struct DependencyView {
    pub deps: Vec<dependencies::Dependency>,
    pub errors: Vec<dependencies::DependencyError>,
    pub cycles: std::collections::BTreeMap<String, String>,
    pub standings: HashMap<String, Standing>,
    /// The manager that wrote each component's recorded state.
    pub recorded_by: HashMap<String, String>,
    /// Desired active, for every component involved in a dependency.
    pub desired: HashMap<String, bool>,
}

impl DependencyView {
    pub fn read(conn: &Connection) -> rusqlite::Result<DependencyView> {
        let rows = dependencies::all(conn)?;
        if rows.is_empty() {
            return Ok(DependencyView {
                deps: Vec::new(),
                errors: Vec::new(),
                cycles: Default::default(),
                standings: HashMap::new(),
                recorded_by: HashMap::new(),
                desired: HashMap::new(),
            });
        }
        let all = components::all(conn)?;
        let known: BTreeSet<String> = all.iter().map(|row| row.component_id.clone()).collect();
        let (deps, errors) = dependencies::validate(&rows, &known);
        let cycles = dependencies::cycles(&deps);
        let wanted: HashSet<&str> = deps
            .iter()
            .flat_map(|d| [d.depends_on.as_str(), d.component_id.as_str()])
            .collect();
        let desired = all
            .iter()
            .filter(|row| wanted.contains(row.component_id.as_str()))
            .map(|row| (row.component_id.clone(), row.desired_active))
            .collect();
        let mut standings = HashMap::new();
        let mut recorded_by = HashMap::new();
        for saved in state::load_all(conn, None)? {
            if wanted.contains(saved.component_id.as_str()) {
                standings.insert(saved.component_id.clone(), Standing::of(&saved));
                recorded_by.insert(saved.component_id, saved.manager);
            }
        }
        Ok(DependencyView {
            deps,
            errors,
            cycles,
            standings,
            recorded_by,
            desired,
        })
    }

    /// Dependents of `id` still running or stopping: a disabled dependency stops only after
    /// them. A dependent whose process is gone still counts while the manager that recorded it
    /// running lives: that manager has yet to record the stop (its writer is behind, or the
    /// rest of the tree is still going), and the dependency's stop must come after that.
    pub fn running_dependents(&self, id: &str, manager_alive: impl Fn(&str) -> bool) -> Vec<&str> {
        dependencies::dependents(id, &self.deps)
            .filter(|d| match self.standings.get(*d).map(|s| s.state) {
                Some(RunState::Running | RunState::Stopping) => true,
                Some(RunState::Dead) => self
                    .recorded_by
                    .get(*d)
                    .is_some_and(|manager| manager_alive(manager)),
                _ => false,
            })
            .collect()
    }

    pub fn gate(&self, id: &str) -> Gate {
        if let Some(cycle) = self.cycles.get(id) {
            return Gate::Cycle(cycle.clone());
        }
        let disabled: Vec<&str> = self
            .deps
            .iter()
            .filter(|d| d.component_id == id && self.desired.get(&d.depends_on) == Some(&false))
            .map(|d| d.depends_on.as_str())
            .collect();
        if !disabled.is_empty() {
            return Gate::Halt(format!(
                "its dependency {} is disabled",
                disabled.join(", ")
            ));
        }
        match dependencies::waiting_for(id, &self.deps, &self.standings) {
            Some(what) => Gate::Waiting(what),
            None => Gate::Open,
        }
    }
}

impl Manager {
    /// Each of our components' gate, and those of ours whose stop must wait for dependents
    /// still running; a bad row of ours is one ERROR event (per distinct error), and the
    /// manager carries on without it.
    pub(super) fn dependency_gates(
        &mut self,
        ours: &HashSet<&str>,
    ) -> (HashMap<String, Gate>, HashSet<String>) {
        let view = match DependencyView::read(&self.conn) {
            Ok(view) => view,
            Err(error) => {
                tracing::error!(
                    "cannot read {}: {error}; start order unchanged until it can be read",
                    n0m1_core::schema::COMPONENT_DEPENDENCIES
                );
                let gates = self
                    .slots
                    .iter()
                    .map(|(id, slot)| (id.clone(), slot.machine.gate().clone()))
                    .collect();
                return (gates, HashSet::new());
            }
        };
        let mut errors: HashMap<&str, std::collections::BTreeMap<String, String>> = HashMap::new();
        for error in &view.errors {
            if ours.contains(error.component_id.as_str()) {
                errors
                    .entry(error.component_id.as_str())
                    .or_default()
                    .insert(error.depends_on.clone(), error.to_string());
            }
        }
        for (id, slot) in &mut self.slots {
            let now = errors.remove(id.as_str()).unwrap_or_default();
            for (depends_on, message) in &now {
                if slot.dependency_errors.get(depends_on) != Some(message) {
                    self.exec.writer.event(
                        LifecycleRecord::new(id, LifecycleEvent::Error)
                            .manager(self.options.manager.clone())
                            .message(message.clone()),
                    );
                }
            }
            slot.dependency_errors = now;
        }
        let gates = ours
            .iter()
            .map(|id| ((*id).to_owned(), view.gate(id)))
            .collect();
        let home = &self.options.home;
        let own = self.options.manager.as_str();
        let manager_alive = |manager: &str| {
            manager == own
                || matches!(
                    PidFile::inspect(&home.pid_file(manager)),
                    Ok(PidStatus::Live { .. })
                )
        };
        let held = ours
            .iter()
            .filter(|id| !view.running_dependents(id, manager_alive).is_empty())
            .map(|id| (*id).to_owned())
            .collect();
        self.dependencies = view.deps;
        (gates, held)
    }
}

/// What the watcher hashes so that a change in the dependencies, or in the standing of
/// anything depended on, wakes the manager.
pub(super) fn fingerprint(
    conn: &Connection,
    hasher: &mut impl std::hash::Hasher,
) -> rusqlite::Result<()> {
    use std::hash::Hash;
    let view = DependencyView::read(conn)?;
    view.deps.hash(hasher);
    let mut desired: Vec<(&String, &bool)> = view.desired.iter().collect();
    desired.sort();
    desired.hash(hasher);
    let mut standings: Vec<(&String, &Standing)> = view.standings.iter().collect();
    standings.sort_by_key(|(id, _)| *id);
    for (id, standing) in standings {
        id.hash(hasher);
        standing.state.as_str().hash(hasher);
        standing.ready.hash(hasher);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(dependent: RunState) -> DependencyView {
        DependencyView {
            deps: vec![dependencies::Dependency {
                component_id: "dependent".into(),
                depends_on: "base".into(),
                condition: dependencies::Condition::Started,
            }],
            errors: Vec::new(),
            cycles: Default::default(),
            standings: HashMap::from([(
                "dependent".to_owned(),
                Standing {
                    state: dependent,
                    ready: false,
                    exited_ok: false,
                },
            )]),
            recorded_by: HashMap::from([("dependent".to_owned(), "nano_manager".to_owned())]),
            desired: HashMap::new(),
        }
    }

    #[test]
    fn a_dependent_holds_its_dependency_until_its_stop_is_recorded() {
        // (recorded standing, its manager alive, holds the dependency's stop)
        let table = [
            (RunState::Running, false, true),
            (RunState::Stopping, false, true),
            // Process gone, stop not yet recorded by a manager that lives: still holds.
            (RunState::Dead, true, true),
            // Process gone with its manager: nobody will record the stop.
            (RunState::Dead, false, false),
            (RunState::Waiting, true, false),
            (RunState::Stopped, true, false),
            (RunState::Failed, true, false),
        ];
        for (state, alive, holds) in table {
            let view = view(state);
            let held = !view
                .running_dependents("base", |m| {
                    assert_eq!(m, "nano_manager");
                    alive
                })
                .is_empty();
            assert_eq!(held, holds, "{state} with its manager alive: {alive}");
        }
    }
}
