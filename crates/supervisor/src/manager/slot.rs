//! What the manager keeps per component: its machine and everything the executor holds for
//! it, in one place, so nothing is looked up twice and nothing outlives the component.

use std::collections::BTreeMap;

use n0m1_core::cgroup::ComponentCgroup;
use n0m1_core::pidfile::PidFile;

use crate::machine::Component;

/// One supervised component.
pub(super) struct Slot {
    /// The supervision policy's state.
    pub machine: Component,
    /// The PID file naming its process, held (locked) while the process runs.
    pub pid_file: Option<PidFile>,
    /// Descendants that left its process group (pid, start time), found when a stop began.
    pub escaped: Vec<(i32, u64)>,
    /// The last error its `component_health` row gave, so a bad row is said once.
    pub health_error: Option<String>,
    /// The same for its `component_schedules` row.
    pub schedule_error: Option<String>,
    /// The same for its `component_dependencies` rows, by the component depended on.
    pub dependency_errors: BTreeMap<String, String>,
    /// At shutdown: not yet told to stop (its dependents go first).
    pub shutdown_pending: bool,
    /// Its cgroup while it has one (from its first spawn until its tree is gone).
    pub cgroup: Option<ComponentCgroup>,
    /// The cgroup's OOM-kill count already accounted for.
    pub oom_seen: u64,
    /// Its cgroup's memory counters cover all it holds: it started inside. A process moved in
    /// when given a limit keeps its earlier pages charged elsewhere (the kernel never moves
    /// charges), so until its next start its samples come from /proc.
    pub memory_counted: bool,
    /// The limits last written to its cgroup: a restart with the same ones writes nothing.
    pub applied: Option<n0m1_core::limits::Limits>,
    /// The leader the executor last started (or adopted): what `KillOrphans` spares.
    pub leader: Option<i32>,
    /// The last reason its limits could not be applied, so it is said once.
    pub limits_error: Option<String>,
}

impl Slot {
    pub fn new(machine: Component) -> Slot {
        Slot {
            machine,
            pid_file: None,
            escaped: Vec::new(),
            health_error: None,
            schedule_error: None,
            dependency_errors: BTreeMap::new(),
            shutdown_pending: false,
            cgroup: None,
            oom_seen: 0,
            applied: None,
            memory_counted: false,
            leader: None,
            limits_error: None,
        }
    }
}

/// Who a live child of the manager is: the index from a reaped pid back to its slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PidOwner {
    /// The process-group leader of a component.
    Leader(String),
    /// A health probe checking a component.
    Probe(String),
}
