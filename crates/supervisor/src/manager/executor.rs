//! The manager's executor: performs a machine's effects with syscalls, PID files and the
//! lifecycle writer, and answers a spawn or a probe with the machine input it leads to.
//!
//! Every effect carries what it needs (what to launch, the row to save); what the executor
//! keeps for a component lives in its `Slot`, handed in with the effect. The executor looks
//! nothing up in the manager: data flows one way, from the machine to here.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use n0m1_core::Home;
use n0m1_core::cgroup::{ComponentCgroup, HomeCgroups};
use n0m1_core::components::LaunchKey;
use n0m1_core::home::{
    ENV_CHECKED_COMPONENT, ENV_CHECKED_PID, ENV_COMPONENT_ID, ENV_HOME, LogOwner,
};
use n0m1_core::lifecycle::{LifecycleEvent, LifecycleRecord};
use n0m1_core::limits::Limits;
use n0m1_core::logpipe::LogPipes;
use n0m1_core::notify::{ENV_NOTIFY_SOCKET, ENV_WATCHDOG_USEC};
use n0m1_core::pidfile::PidFile;
use n0m1_core::process::{self, ProcStat, SpawnSpec};
use n0m1_core::writer::Writer;
use nix::sys::signal::Signal;

use super::slot::{PidOwner, Slot};
use crate::launch::{ScriptResolver, launch_args};
use crate::machine::{Effect, Input};

pub(super) struct Executor {
    pub home: Home,
    /// The manager's name, added to every row it queues.
    pub manager: String,
    pub resolver: ScriptResolver,
    /// Every database write of the manager goes through here.
    pub writer: Writer,
    /// The components' log FIFOs, held open (see `n0m1_core::logpipe`).
    pub log_pipes: LogPipes,
    /// The manager's sd_notify socket, given to components as `NOTIFY_SOCKET`.
    pub notify_socket: Option<PathBuf>,
    /// Started by boot (which runs the log writer).
    pub under_boot: bool,
    /// One /proc snapshot per loop turn, taken only if a stop needs it.
    pub snapshot: Option<Vec<ProcStat>>,
    /// Live children (leaders and probes) and adopted leaders → their component.
    pub pids: HashMap<i32, PidOwner>,
    /// This home's cgroups; `None` where limits are unavailable (said once, at start).
    pub cgroups: Option<HomeCgroups>,
    /// config.json's `logs`: a probe's side log is bounded by them when no log writer runs.
    pub log_settings: n0m1_core::config::LogSettings,
    /// Released PID files, removed from their folder but not yet closed: the manager closes
    /// them after the batch of effects (`close_released`), so freeing a file is not between
    /// a crash and its replacement's spawn.
    pub released: Vec<std::fs::File>,
}

impl Executor {
    /// Performs one effect of component `id` (whose slot is `slot`); a spawn or a probe
    /// returns its answer. `Effect::Forget` is the caller's: it owns the slots.
    pub fn perform(&mut self, id: &str, slot: &mut Slot, effect: Effect) -> Option<Input> {
        match effect {
            Effect::Spawn {
                launch,
                watchdog,
                limits,
            } => {
                return Some(self.spawn(id, slot, &launch, watchdog, &limits));
            }
            Effect::ApplyLimits(limits) => self.apply_limits(id, slot, &limits),
            Effect::Terminate { pid } => self.terminate(slot, pid),
            Effect::Kill { pid } => {
                process::signal_group(pid, Signal::SIGKILL);
                for (escaped, ticks) in &slot.escaped {
                    if process::is_same_process(*escaped, *ticks) {
                        process::signal_process(*escaped, Signal::SIGKILL);
                    }
                }
                // Everything in its cgroup, however it left the group or its environment.
                if let Some(cgroup) = &slot.cgroup {
                    cgroup.kill();
                }
            }
            Effect::ReleasePidFile => {
                if let Some(pid_file) = slot.pid_file.take() {
                    self.released.push(pid_file.unlink());
                }
                slot.escaped.clear();
                slot.leader = None;
            }
            Effect::KillOrphans => match &slot.cgroup {
                Some(cgroup) => kill_cgroup_orphans(cgroup, slot.leader),
                None => self.kill_orphans(id),
            },
            Effect::Record(record) => self.writer.event(record.manager(self.manager.clone())),
            Effect::SaveState(mut row) => {
                row.manager = self.manager.clone();
                self.writer.state(row);
            }
            Effect::RunProbe {
                program,
                checked_pid,
            } => return Some(self.run_probe(id, program, checked_pid)),
            Effect::KillProbe { pid } => process::signal_group(pid, Signal::SIGKILL),
            Effect::Forget => {}
        }
        None
    }

    /// Closes the PID files released during the last batch of effects.
    pub fn close_released(&mut self) {
        self.released.clear();
    }

    /// Starts a health probe (a group leader, our child, reaped by the loop). It gets the
    /// home and which component it checks, but not `N0M1_COMPONENT_ID`: it is not part of
    /// the component (an orphan sweep would take it for one).
    fn run_probe(&mut self, id: &str, program: PathBuf, checked_pid: i32) -> Input {
        // Through the log writer, bounded and rotated like every log.
        let via_writer = self.under_boot || n0m1_core::logpipe::log_writer_running(&self.home);
        let log = self.log_pipes.side_path(
            &self.home,
            &self.home.probe_log_name(id),
            via_writer,
            &self.log_settings,
        );
        let spec = SpawnSpec {
            program,
            args: Vec::new(),
            env: vec![
                (ENV_HOME.to_owned(), self.home.root().as_os_str().to_owned()),
                (ENV_CHECKED_COMPONENT.to_owned(), id.into()),
                (ENV_CHECKED_PID.to_owned(), checked_pid.to_string().into()),
            ],
            stdout: log.clone(),
            stderr: log,
            current_dir: self.home.root().to_path_buf(),
        };
        match process::spawn(&spec) {
            Ok(spawned) => {
                self.pids
                    .insert(spawned.pid, PidOwner::Probe(id.to_owned()));
                Input::ProbeStarted { pid: spawned.pid }
            }
            Err(error) => Input::ProbeDone {
                pid: None,
                ok: false,
                how: format!("cannot start: {error}"),
            },
        }
    }

    /// Resolves the row's program and arguments and spawns it as a process-group leader.
    fn spawn(
        &mut self,
        id: &str,
        slot: &mut Slot,
        launch: &LaunchKey,
        watchdog: Option<Duration>,
        limits: &Limits,
    ) -> Input {
        let prepared = self
            .resolver
            .resolve(&launch.base_script_name)
            .and_then(|program| {
                launch_args(launch.launch_args_json.as_deref(), &launch.run_type)
                    .map(|args| (program, args))
            });
        let (program, args) = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                return Input::LaunchFailed {
                    reason: error.to_string(),
                };
            }
        };
        let placement = match self.placement(id, slot, limits) {
            Ok(placement) => placement,
            Err(reason) => return Input::LaunchFailed { reason },
        };
        let home = &self.home;
        // Under boot the log writer runs (boot starts it first); alone, only if it is up.
        let via_writer = self.under_boot || n0m1_core::logpipe::log_writer_running(home);
        let (stdout, stderr) = self
            .log_pipes
            .paths(home, LogOwner::Component, id, via_writer);
        // systemd gives WATCHDOG_PID the service's main pid, known only after the fork: a
        // POSIX shell sets it to its own pid ($$) and execs the program, which keeps that pid.
        let mut argv = program.leading_args.clone();
        argv.extend(args.iter().map(Into::into));
        let (program_path, argv) = match watchdog {
            None => (program.path.clone(), argv),
            Some(_) => {
                let mut wrapped: Vec<OsString> = vec![
                    "-c".into(),
                    "WATCHDOG_PID=$$; export WATCHDOG_PID; exec \"$0\" \"$@\"".into(),
                    program.path.clone().into_os_string(),
                ];
                wrapped.extend(argv);
                (PathBuf::from("/bin/sh"), wrapped)
            }
        };
        let mut env = vec![
            (ENV_HOME.to_owned(), home.root().as_os_str().to_owned()),
            (ENV_COMPONENT_ID.to_owned(), id.into()),
        ];
        if let Some(socket) = &self.notify_socket {
            env.push((ENV_NOTIFY_SOCKET.to_owned(), socket.as_os_str().to_owned()));
        }
        if let Some(period) = watchdog {
            env.push((
                ENV_WATCHDOG_USEC.to_owned(),
                period.as_micros().to_string().into(),
            ));
        }
        let spec = SpawnSpec {
            program: program_path,
            args: argv,
            env,
            stdout,
            stderr,
            current_dir: home.root().to_path_buf(),
        };
        // The PID file names the child as soon as it exists, while its exec completes.
        let pid_path = home.pid_file(id);
        let mut pid_file = None;
        let spawned = match process::spawn_placed_with(&spec, placement, |pid| {
            match PidFile::acquire_for(&pid_path, pid) {
                Ok(file) => pid_file = Some(file),
                Err(error) => tracing::error!("{id}: cannot write its PID file: {error}"),
            }
        }) {
            Ok(spawned) => spawned,
            Err(error) => {
                if let Some(file) = pid_file {
                    file.remove();
                }
                return Input::SpawnFailed {
                    reason: error.to_string(),
                };
            }
        };
        slot.pid_file = pid_file;
        self.pids
            .insert(spawned.pid, PidOwner::Leader(id.to_owned()));
        slot.leader = Some(spawned.pid);
        Input::Spawned {
            pid: spawned.pid,
            start_ticks: spawned.start_ticks,
            script_path: program.describe(),
        }
    }

    /// Where the component runs: its cgroup (created, limits written, its `cgroup.procs`
    /// opened for the child to join) and its account. `Err` is a row that cannot run as
    /// written (an unknown user), named.
    fn placement(
        &mut self,
        id: &str,
        slot: &mut Slot,
        limits: &Limits,
    ) -> Result<process::Placement, String> {
        let account = match &limits.user {
            None => None,
            Some(_) if !nix::unistd::Uid::effective().is_root() => {
                return Err(format!(
                    "{id} is to run as user {} but {} does not run as root; only root can start a process as another user",
                    limits.user.as_deref().unwrap_or_default(),
                    self.manager
                ));
            }
            Some(user) => Some(
                process::Account::resolve(user, limits.group.as_deref())
                    .map_err(|error| format!("{error} (component_limits of {id})"))?,
            ),
        };
        if account.is_some() {
            self.home
                .open_to_other_accounts(self.notify_socket.as_deref())
                .map_err(|error| format!("{id} cannot run as another user: {error}"))?;
        }
        let mut placement = process::Placement {
            birth: None,
            cgroup_procs: Vec::new(),
            account,
        };
        let Some(cgroups) = &self.cgroups else {
            return Ok(placement);
        };
        if slot.cgroup.is_none() {
            slot.applied = None;
        }
        let cgroup = slot
            .cgroup
            .get_or_insert_with(|| cgroups.component(&self.manager, id));
        // A restart into the cgroup its predecessor had, with the same limits, only opens it.
        let prepared = match &slot.applied {
            Some(applied) if applied == limits => Ok(()),
            _ => cgroup.create().and_then(|()| cgroup.apply(limits)),
        };
        match prepared.and_then(|()| cgroup.placement(limits)) {
            Ok((birth, joins)) => {
                placement.birth = birth;
                placement.cgroup_procs = joins;
                if limits.limits_memory() {
                    slot.oom_seen = cgroup.oom_kills().unwrap_or(0);
                }
                slot.applied = Some(limits.clone());
                slot.memory_counted = true;
                slot.limits_error = None;
            }
            Err(error) => {
                // Supervised without its cgroup rather than not at all; said once.
                let message = format!("{id} runs without its cgroup: {error}");
                if slot.limits_error.as_deref() != Some(message.as_str()) {
                    self.writer.event(
                        LifecycleRecord::new(id, LifecycleEvent::LimitsUnavailable)
                            .manager(self.manager.clone())
                            .message(message.clone()),
                    );
                    slot.limits_error = Some(message);
                }
                slot.cgroup = None;
            }
        }
        Ok(placement)
    }

    /// Changed limits, written to the running process's cgroup.
    fn apply_limits(&mut self, id: &str, slot: &mut Slot, limits: &Limits) {
        let Some(cgroup) = &slot.cgroup else {
            return;
        };
        // Its folders may be gone from a hierarchy it was not in (removed while empty).
        let applied = cgroup.create().and_then(|()| cgroup.apply(limits));
        slot.applied = applied.is_ok().then(|| limits.clone());
        slot.memory_counted = false;
        let record = match applied {
            Ok(()) => {
                // Into the hierarchies of the controllers it is now limited by.
                cgroup.enter(limits);
                LifecycleRecord::new(id, LifecycleEvent::LimitsApplied).message(format!(
                    "applied to the running process: {}",
                    limits.describe()
                ))
            }
            Err(error) => LifecycleRecord::new(id, LifecycleEvent::Error).message(format!(
                "cannot apply its limits ({}): {error}",
                limits.describe()
            )),
        };
        self.writer.event(record.manager(self.manager.clone()));
    }

    /// SIGTERM to the group, and to descendants that left it (setsid), found now while the
    /// tree still links them to the leader, or, with a cgroup, by being in it.
    fn terminate(&mut self, slot: &mut Slot, pid: i32) {
        let processes = self.snapshot.get_or_insert_with(process::all_processes);
        slot.escaped = process::descendants_in(processes, pid)
            .into_iter()
            .filter(|p| p.pgrp != pid)
            .map(|p| (p.pid, p.start_ticks))
            .collect();
        if let Some(cgroup) = &slot.cgroup {
            for member in cgroup.pids() {
                let known = slot.escaped.iter().any(|(p, _)| *p == member);
                if let Some(stat) = processes.iter().find(|p| p.pid == member)
                    && stat.pgrp != pid
                    && !known
                {
                    slot.escaped.push((member, stat.start_ticks));
                }
            }
        }
        process::signal_group(pid, Signal::SIGTERM);
        for (escaped_pid, _) in &slot.escaped {
            process::signal_process(*escaped_pid, Signal::SIGTERM);
        }
    }

    /// Our children that are not a component's leader but carry component `id` of this home
    /// in their environment: what a dead leader left outside its group (`setsid`, double
    /// forks). They die with their subtree; the reaper collects them.
    fn kill_orphans(&mut self, id: &str) {
        let me = std::process::id() as i32;
        let home = self.home.root().to_string_lossy().into_owned();
        let processes = self.snapshot.get_or_insert_with(process::all_processes);
        let mut doomed = Vec::new();
        for orphan in processes
            .iter()
            .filter(|p| p.ppid == me && p.is_alive() && !self.pids.contains_key(&p.pid))
        {
            if process::environ_has(orphan.pid, ENV_COMPONENT_ID, id)
                && process::environ_has(orphan.pid, ENV_HOME, &home)
            {
                doomed.push(orphan.pid);
                doomed.extend(
                    process::descendants_in(processes, orphan.pid)
                        .iter()
                        .map(|d| d.pid),
                );
            }
        }
        if !doomed.is_empty() {
            tracing::info!(
                "{id}: killing {} processes it left behind outside its group",
                doomed.len()
            );
        }
        for pid in doomed {
            process::signal_process(pid, Signal::SIGKILL);
        }
    }
}

/// SIGKILL to every process in a component's cgroup outside the group of `leader` (the
/// replacement just started, if any): what a dead leader left behind.
fn kill_cgroup_orphans(cgroup: &ComponentCgroup, leader: Option<i32>) {
    for pid in cgroup.pids() {
        let in_leaders_group = leader.is_some_and(|leader| {
            pid == leader || process::ProcStat::read(pid).is_some_and(|s| s.pgrp == leader)
        });
        if !in_leaders_group {
            process::signal_process(pid, Signal::SIGKILL);
        }
    }
}

/// True when the group led by `pid` is empty and every escaped descendant is gone (with a
/// cgroup: when nothing is left in it).
pub(super) fn tree_gone(slot: &Slot, pid: i32) -> bool {
    if let Some(cgroup) = &slot.cgroup {
        return cgroup.is_empty();
    }
    !process::group_exists(pid)
        && !slot
            .escaped
            .iter()
            .any(|(escaped, ticks)| process::is_same_process(*escaped, *ticks))
}

#[cfg(test)]
mod tests;
