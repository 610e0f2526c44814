//! Adoption: a manager that was SIGKILLed and restarted by boot takes back its components
//! that are still running, instead of starting duplicates.

use std::time::Duration;

use n0m1_core::components;
use n0m1_core::components::ComponentRow;
use n0m1_core::home::{ENV_COMPONENT_ID, ENV_HOME, validate_supervised_id};
use n0m1_core::pidfile::{PidFile, PidStatus};
use n0m1_core::process::{self, ProcStat};
use n0m1_core::state::{self, ComponentState, RunState, unix_now};

use super::Manager;
use super::slot::{PidOwner, Slot};
use crate::machine::{Component, Input};

impl Manager {
    pub(super) fn adopt_survivors(&mut self) {
        let saved_rows = state::load_all(&self.conn, Some(&self.options.manager)).unwrap_or_else(|error| {
            tracing::error!("cannot read component_state ({error}); identifying survivors by environment only");
            Vec::new()
        });
        let rows = components::of_manager(&self.conn, &self.options.manager).unwrap_or_default();
        for row in rows {
            let id = row.component_id.clone();
            if validate_supervised_id(&id).is_err() {
                continue;
            }
            let pid_path = self.options.home.pid_file(&id);
            let saved = saved_rows.iter().find(|s| s.component_id == id);
            let Ok(PidStatus::Stale { pid: Some(pid) }) = PidFile::inspect(&pid_path) else {
                self.note_vanished(row, saved);
                continue;
            };
            // The process must be the one we started: by the start time recorded with its pid,
            // or, when the manager died before recording it, by the environment every
            // component gets (its id and this home), never by the pid alone.
            let identified = match saved.and_then(|s| Some((s.pid?, s.pid_start_ticks?))) {
                Some((saved_pid, ticks)) if saved_pid == pid => {
                    process::is_same_process(pid, ticks)
                }
                _ => {
                    process::is_alive(pid)
                        && process::environ_has(pid, ENV_COMPONENT_ID, &id)
                        && process::environ_has(
                            pid,
                            ENV_HOME,
                            &self.options.home.root().to_string_lossy(),
                        )
                }
            };
            let Some(stat) = ProcStat::read(pid).filter(|_| identified) else {
                let _ = std::fs::remove_file(&pid_path);
                self.note_vanished(row, saved);
                continue;
            };
            let watching = match &self.pid_watcher {
                Some(watcher) => watcher.watch(pid),
                None => Err(std::io::Error::other("no pidfd watcher")),
            };
            if let Err(error) = watching {
                tracing::error!("{id}: cannot watch adopted pid {pid}: {error}");
                continue;
            }
            let mut slot = Slot::new(Component::new(row));
            slot.pid_file = PidFile::acquire_for(&pid_path, pid).ok();
            slot.leader = Some(pid);
            // Its cgroup from the previous life, with the OOM kills already counted.
            if let Some(cgroups) = &self.exec.cgroups {
                let cgroup = cgroups.component(&self.options.manager, &id);
                if cgroup.exists() {
                    slot.oom_seen = cgroup.oom_kills().unwrap_or(0);
                    slot.cgroup = Some(cgroup);
                }
            }
            let started_unix = saved.and_then(|s| s.started_at).unwrap_or_else(unix_now);
            let input = Input::Adopted {
                pid,
                start_ticks: stat.start_ticks,
                started_unix,
                age: Duration::from_secs_f64((unix_now() - started_unix).max(0.0)),
                restarts: saved.map_or(0, |s| s.restarts),
                last_exit: saved.and_then(|s| s.last_exit.clone()),
                ready: saved.is_some_and(|s| s.ready),
                status_text: saved.and_then(|s| s.status_text.clone()),
            };
            self.exec.pids.insert(pid, PidOwner::Leader(id.clone()));
            self.slots.insert(id.clone(), slot);
            self.dispatch(&id, input);
        }
    }

    /// A component its previous life recorded as running whose process is gone died
    /// unwatched: say so, and keep its restart count.
    fn note_vanished(&mut self, row: ComponentRow, saved: Option<&ComponentState>) {
        let Some(saved) =
            saved.filter(|s| matches!(s.state, RunState::Running | RunState::Stopping))
        else {
            return;
        };
        let id = row.component_id.clone();
        self.slots
            .insert(id.clone(), Slot::new(Component::new(row)));
        self.dispatch(
            &id,
            Input::Vanished {
                pid: saved.pid.unwrap_or(0),
                restarts: saved.restarts,
            },
        );
    }
}
