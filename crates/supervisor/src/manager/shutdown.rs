//! How a manager stops: in reverse dependency order on SIGTERM, and at once when its
//! database file is deleted or replaced.

use n0m1_core::lifecycle::{LifecycleEvent, LifecycleRecord};
use n0m1_core::state::RunState;

use super::Manager;
use crate::machine::Input;

impl Manager {
    /// The rows the manager acts on are no longer in the file at the database path: it
    /// stops its components and exits with the reason rather than supervise from a file
    /// nobody reads (boot then stops the system: see `Boot::database_replaced`).
    pub(super) fn database_replaced(&mut self) {
        let Err(error) = self.database.check() else {
            return;
        };
        tracing::error!("{error}");
        self.exec.writer.event(
            LifecycleRecord::new(&self.options.manager, LifecycleEvent::Error)
                .pid(std::process::id() as i32)
                .message(error.to_string()),
        );
        self.database_gone = Some(error);
        self.begin_shutdown();
    }

    pub(super) fn begin_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        for slot in self.slots.values_mut() {
            slot.shutdown_pending = true;
        }
        self.continue_shutdown();
    }

    /// Stops in reverse dependency order: a component is told to stop once none of its
    /// dependents of this manager is still running. Everything that may stop is signalled in
    /// the same turn (one /proc snapshot for all); their exits are collected by the loop.
    pub(super) fn continue_shutdown(&mut self) {
        let pending: Vec<&String> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.shutdown_pending)
            .map(|(id, _)| id)
            .collect();
        if pending.is_empty() {
            return;
        }
        let running = |id: &str| {
            self.slots
                .get(id)
                .is_some_and(|slot| slot.machine.proc().is_some())
        };
        let mut now: Vec<String> = pending
            .iter()
            .filter(|id| {
                !n0m1_core::dependencies::dependents(id, &self.dependencies)
                    .any(|dependent| dependent != id.as_str() && running(dependent))
            })
            .map(|id| (*id).clone())
            .collect();
        let stopping = self
            .slots
            .values()
            .any(|slot| slot.machine.run_state() == RunState::Stopping);
        if now.is_empty() && !stopping {
            // Nothing can go first (dependencies added into a cycle while running): all at once.
            now = pending.into_iter().cloned().collect();
        }
        for id in now {
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.shutdown_pending = false;
            }
            self.dispatch(&id, Input::Shutdown);
        }
    }
}
