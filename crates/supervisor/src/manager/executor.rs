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
use n0m1_core::components::LaunchKey;
use n0m1_core::home::{
    ENV_CHECKED_COMPONENT, ENV_CHECKED_PID, ENV_COMPONENT_ID, ENV_HOME, LogOwner,
};
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
}

impl Executor {
    /// Performs one effect of component `id` (whose slot is `slot`); a spawn or a probe
    /// returns its answer. `Effect::Forget` is the caller's: it owns the slots.
    pub fn perform(&mut self, id: &str, slot: &mut Slot, effect: Effect) -> Option<Input> {
        match effect {
            Effect::Spawn { launch, watchdog } => {
                return Some(self.spawn(id, slot, &launch, watchdog));
            }
            Effect::Terminate { pid } => self.terminate(slot, pid),
            Effect::Kill { pid } => {
                process::signal_group(pid, Signal::SIGKILL);
                for (escaped, ticks) in &slot.escaped {
                    if process::is_same_process(*escaped, *ticks) {
                        process::signal_process(*escaped, Signal::SIGKILL);
                    }
                }
            }
            Effect::ReleasePidFile => {
                if let Some(pid_file) = slot.pid_file.take() {
                    pid_file.remove();
                }
                slot.escaped.clear();
            }
            Effect::KillOrphans => self.kill_orphans(id),
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

    /// Starts a health probe (a group leader, our child, reaped by the loop). It gets the
    /// home and which component it checks, but not `N0M1_COMPONENT_ID`: it is not part of
    /// the component (an orphan sweep would take it for one).
    fn run_probe(&mut self, id: &str, program: PathBuf, checked_pid: i32) -> Input {
        let log = self.home.probe_log(id);
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
        let spawned = match process::spawn(&spec) {
            Ok(spawned) => spawned,
            Err(error) => {
                return Input::SpawnFailed {
                    reason: error.to_string(),
                };
            }
        };
        match PidFile::acquire_for(&home.pid_file(id), spawned.pid) {
            Ok(file) => slot.pid_file = Some(file),
            Err(error) => tracing::error!("{id}: cannot write its PID file: {error}"),
        }
        self.pids
            .insert(spawned.pid, PidOwner::Leader(id.to_owned()));
        Input::Spawned {
            pid: spawned.pid,
            start_ticks: spawned.start_ticks,
            script_path: program.describe(),
        }
    }

    /// SIGTERM to the group, and to descendants that left it (setsid), found now while the
    /// tree still links them to the leader.
    fn terminate(&mut self, slot: &mut Slot, pid: i32) {
        let processes = self.snapshot.get_or_insert_with(process::all_processes);
        slot.escaped = process::descendants_in(processes, pid)
            .into_iter()
            .filter(|p| p.pgrp != pid)
            .map(|p| (p.pid, p.start_ticks))
            .collect();
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

/// True when the group led by `pid` is empty and every escaped descendant is gone.
pub(super) fn tree_gone(slot: &Slot, pid: i32) -> bool {
    !process::group_exists(pid)
        && !slot
            .escaped
            .iter()
            .any(|(escaped, ticks)| process::is_same_process(*escaped, *ticks))
}

#[cfg(test)]
mod tests;
