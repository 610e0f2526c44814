//! The manager's side of resource limits: finding this home's cgroups at start (or saying
//! once why there are none), noticing OOM kills, and removing a component's cgroup once its
//! tree is gone.

use n0m1_core::cgroup::{Layout, home_id};
use n0m1_core::lifecycle::{LifecycleEvent, LifecycleRecord};

use super::Manager;

impl Manager {
    /// This home's cgroups, created if need be; without permission or controllers the
    /// components run as before (process groups and the environment sweep), said once.
    pub(super) fn find_cgroups(&mut self) {
        let id = home_id(self.options.home.root());
        match Layout::detect().and_then(|layout| Ok((layout.home(&id)?, layout))) {
            Ok((cgroups, layout)) => {
                self.exec.cgroups = Some(cgroups);
                self.cgroup_layout = Some(layout);
            }
            Err(error) => self.exec.writer.event(
                LifecycleRecord::new(&self.options.manager, LifecycleEvent::LimitsUnavailable)
                    .pid(std::process::id() as i32)
                    .message(format!(
                        "resource limits are unavailable: {error}; components run without cgroups, tracked by process group and environment as before"
                    )),
            ),
        }
    }

    /// The OOM kill of `pid` by its component's memory limit, if the cgroup counted one
    /// since the last look: what `OOM_KILLED` says.
    pub(super) fn new_oom_kill(&mut self, id: &str, pid: i32) -> Option<String> {
        let slot = self.slots.get_mut(id)?;
        // Only a memory limit of its own kills it (no read on an unlimited one's restart).
        if !slot.machine.limits().limits_memory() {
            return None;
        }
        let cgroup = slot.cgroup.as_ref()?;
        let kills = cgroup.oom_kills()?;
        if kills <= slot.oom_seen {
            return None;
        }
        slot.oom_seen = kills;
        Some(cgroup.describe_oom(slot.machine.limits(), pid))
    }

    /// OOM kills of a component's other processes (its leader lives on): recorded as they
    /// are found, on the sampling timer.
    pub(super) fn check_oom_kills(&mut self) {
        let running: Vec<(String, i32)> = self
            .slots
            .iter()
            .filter_map(|(id, slot)| Some((id.clone(), slot.machine.proc()?.pid)))
            .collect();
        for (id, leader) in running {
            if let Some(detail) = self.new_oom_kill(&id, leader) {
                self.exec.writer.event(
                    LifecycleRecord::new(&id, LifecycleEvent::OomKilled)
                        .manager(self.options.manager.clone())
                        .pid(leader)
                        .message(format!(
                            "a process of {id}, not its leader, was killed by the kernel: {detail}"
                        )),
                );
            }
        }
    }

    /// A component with no process any more loses its cgroup once it is empty (whatever is
    /// still in it is killed: nothing of a stopped component outlives it).
    pub(super) fn settle_cgroups(&mut self) {
        for slot in self.slots.values_mut() {
            let Some(cgroup) = &slot.cgroup else {
                continue;
            };
            let running = slot.machine.proc().is_some()
                || slot.machine.run_state() == n0m1_core::state::RunState::Running;
            if running {
                continue;
            }
            if cgroup.remove() {
                slot.cgroup = None;
                slot.applied = None;
            } else {
                cgroup.kill();
            }
        }
    }
}
