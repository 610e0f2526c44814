//! The manager's passes over its tables: `autorun_components` rows, operator requests and
//! `component_health` rows become machine inputs; the watcher's fingerprint says when to
//! look again.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use n0m1_core::components::{self, ComponentRow};
use n0m1_core::health::{self, HealthCheck};
use n0m1_core::lifecycle::{LifecycleEvent, LifecycleRecord};
use n0m1_core::limits::{self, Limits};
use n0m1_core::schedules;
use n0m1_core::state::{self, Request};
use rusqlite::Connection;

use super::Manager;
use super::slot::Slot;
use crate::launch::runs_a_model;
use crate::machine::{Component, Input, Timing};

impl Manager {
    /// Makes the machines see the table.
    pub(super) fn reconcile(&mut self) {
        let rows = match components::of_manager(&self.conn, &self.options.manager) {
            Ok(rows) => rows,
            Err(error) => {
                tracing::error!(
                    "cannot read {}: {error}; will try again",
                    n0m1_core::schema::AUTORUN_COMPONENTS
                );
                return;
            }
        };
        let requests = operator_requests(&self.conn, &self.options.manager);
        for row in &rows {
            self.slots
                .entry(row.component_id.clone())
                .or_insert_with(|| Slot::new(Component::new(row.clone())));
        }
        let ids: HashSet<&str> = rows.iter().map(|r| r.component_id.as_str()).collect();
        let mut checks = self.health_checks(&ids);
        let (mut gates, held) = self.dependency_gates(&ids);
        let mut limits = self.limits_rows();
        let mut timings = self.timings(&rows);
        let mut seen = HashSet::new();
        for row in rows {
            let id = row.component_id.clone();
            let health = checks.remove(&id).unwrap_or_default();
            let gate = gates.remove(&id).unwrap_or_default();
            let request = requests.get(&id).copied();
            if let Some(request) = request {
                self.exec.writer.clear_request(&id, request);
            }
            let mut own_limits = limits.remove(&id).unwrap_or_default();
            if own_limits.memory_max.is_none() && runs_a_model(&row.base_script_name) {
                own_limits.memory_max = self.model_memory_max;
            }
            self.check_limits(&id, &own_limits);
            // Before the row: a spawn it leads to then carries the watchdog settings and limits.
            self.dispatch(&id, Input::Health(health));
            self.dispatch(&id, Input::Limits(own_limits));
            self.dispatch(&id, Input::Dependencies(gate));
            if let Some(timings) = &mut timings {
                let timing = timings.remove(&id).unwrap_or(Timing::Unscheduled);
                self.dispatch(&id, Input::Timing(timing));
            }
            // Disabled while dependents still run: it stops after them (the watcher brings
            // us back here as their states change).
            let running = self
                .slots
                .get(&id)
                .is_some_and(|slot| slot.machine.proc().is_some());
            if !row.desired_active && running && held.contains(&id) {
                seen.insert(id);
                continue;
            }
            self.dispatch(&id, Input::Row { row, request });
            seen.insert(id);
        }
        let gone: Vec<String> = self
            .slots
            .keys()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.dispatch(&id, Input::RowGone);
        }
    }

    /// Each of this manager's components' schedule; a row that does not check, or that
    /// names a component that is not a ONESHOT, is an ERROR event naming it (once per
    /// distinct error). `None` (schedules unchanged) when the table cannot be read now.
    fn timings(&mut self, rows: &[ComponentRow]) -> Option<HashMap<String, Timing>> {
        let (stored, last_runs) = match schedules::all(&self.conn)
            .and_then(|s| Ok((s, schedules::last_runs(&self.conn)?)))
        {
            Ok(found) => found,
            Err(error) => {
                tracing::error!(
                    "cannot read {}: {error}; schedules unchanged until it can be read",
                    n0m1_core::schema::COMPONENT_SCHEDULES
                );
                return None;
            }
        };
        let stored: HashMap<&str, &schedules::ScheduleRow> = stored
            .iter()
            .map(|s| (s.component_id.as_str(), s))
            .collect();
        let mut timings = HashMap::new();
        for row in rows {
            let id = row.component_id.as_str();
            let Some(schedule) = stored.get(id) else {
                if let Some(slot) = self.slots.get_mut(id) {
                    slot.schedule_error = None;
                }
                continue;
            };
            let (timing, error) = if !row.is_oneshot() {
                (
                    Timing::Unscheduled,
                    Some(format!(
                        "its {} row is ignored: only a ONESHOT component runs on a schedule (run_type_on_boot is {:?}; `n0m1ctl add … --oneshot`)",
                        n0m1_core::schema::COMPONENT_SCHEDULES,
                        row.run_type
                    )),
                )
            } else {
                match schedule.check() {
                    Ok(checked) => (
                        Timing::Scheduled {
                            schedule: checked,
                            last_run: last_runs.get(id).copied(),
                        },
                        None,
                    ),
                    Err(error) => (
                        Timing::Broken,
                        Some(format!("{error}; it does not run until the row is fixed")),
                    ),
                }
            };
            if let Some(slot) = self.slots.get_mut(id) {
                if let Some(message) = &error
                    && slot.schedule_error.as_ref() != Some(message)
                {
                    self.exec.writer.event(
                        LifecycleRecord::new(id, LifecycleEvent::Error)
                            .manager(self.options.manager.clone())
                            .message(message.clone()),
                    );
                }
                slot.schedule_error = error;
            }
            timings.insert(id.to_owned(), timing);
        }
        Some(timings)
    }

    /// Every `component_limits` row (unchanged limits when the table cannot be read now).
    fn limits_rows(&mut self) -> HashMap<String, Limits> {
        match limits::all(&self.conn) {
            Ok(rows) => rows,
            Err(error) => {
                tracing::error!(
                    "cannot read {}: {error}; limits unchanged until it can be read",
                    n0m1_core::schema::COMPONENT_LIMITS
                );
                self.slots
                    .iter()
                    .map(|(id, slot)| (id.clone(), slot.machine.limits().clone()))
                    .collect()
            }
        }
    }

    /// A limit this machine cannot enforce (no cgroups, a controller missing) is said once
    /// per component and distinct reason; the component runs without it.
    fn check_limits(&mut self, id: &str, wanted: &Limits) {
        let problem = if wanted.unlimited() {
            None
        } else {
            match &self.cgroup_layout {
                None => Some("its limits are not enforced: resource limits are unavailable here (see the manager's LIMITS_UNAVAILABLE event)".to_owned()),
                Some(layout) => layout.missing(wanted).map(|error| format!("its limits are not all enforced: {error}")),
            }
        };
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        if let Some(message) = &problem
            && slot.limits_error.as_ref() != Some(message)
        {
            self.exec.writer.event(
                LifecycleRecord::new(id, LifecycleEvent::LimitsUnavailable)
                    .manager(self.options.manager.clone())
                    .message(message.clone()),
            );
            slot.limits_error = problem;
        }
    }

    /// The validated `component_health` rows of this manager's components; a bad row is an
    /// ERROR event naming it and its field (once per distinct error) and checks nothing.
    fn health_checks(&mut self, ours: &HashSet<&str>) -> HashMap<String, HealthCheck> {
        let rows = match health::all(&self.conn) {
            Ok(rows) => rows,
            Err(error) => {
                tracing::error!(
                    "cannot read {}: {error}; health checks unchanged until it can be read",
                    n0m1_core::schema::COMPONENT_HEALTH
                );
                return self
                    .slots
                    .iter()
                    .map(|(id, slot)| (id.clone(), slot.machine.health().clone()))
                    .collect();
            }
        };
        let hooks = self.options.home.hooks_dir();
        let mut checks = HashMap::new();
        let mut errors = HashMap::new();
        for row in rows {
            // Another manager's rows are its business.
            if !ours.contains(row.component_id.as_str()) {
                continue;
            }
            match row.check(&hooks) {
                Ok(check) => {
                    checks.insert(row.component_id, check);
                }
                Err(error) => {
                    errors.insert(row.component_id, error.to_string());
                }
            }
        }
        for (id, slot) in &mut self.slots {
            let error = errors.remove(id);
            if let Some(message) = &error
                && slot.health_error.as_ref() != Some(message)
            {
                self.exec.writer.event(
                    LifecycleRecord::new(id, LifecycleEvent::Error)
                        .manager(self.options.manager.clone())
                        .message(message.clone()),
                );
            }
            slot.health_error = error;
        }
        checks
    }
}

/// What the database watcher compares to decide whether this manager must look again: its
/// rows and its pending operator requests, nothing else.
pub(super) fn rows_fingerprint(conn: &Connection, manager: &str) -> rusqlite::Result<u64> {
    let rows: Vec<ComponentRow> = components::of_manager(conn, manager)?;
    let mut requests: Vec<(String, Request)> =
        operator_requests(conn, manager).into_iter().collect();
    requests.sort_by(|a, b| a.0.cmp(&b.0));
    let checks = health::all(conn)?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    rows.hash(&mut hasher);
    requests.hash(&mut hasher);
    checks.hash(&mut hasher);
    limits::fingerprint(conn)?.hash(&mut hasher);
    schedules::all(conn)?.hash(&mut hasher);
    super::gates::fingerprint(conn, &mut hasher)?;
    Ok(hasher.finish())
}

fn operator_requests(conn: &Connection, manager: &str) -> HashMap<String, Request> {
    state::load_all(conn, Some(manager))
        .map(|rows| {
            rows.into_iter()
                .filter_map(|r| Some((r.component_id, r.request?)))
                .collect()
        })
        .unwrap_or_default()
}
