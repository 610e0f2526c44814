//! The manager's executor: performs a machine's effects with syscalls, PID files and the
//! lifecycle writer, and answers a spawn with the machine input it leads to.

use n0m1_core::home::{
    ENV_CHECKED_COMPONENT, ENV_CHECKED_PID, ENV_COMPONENT_ID, ENV_HOME, LogOwner,
};
use n0m1_core::notify::{ENV_NOTIFY_SOCKET, ENV_WATCHDOG_USEC};
use n0m1_core::pidfile::PidFile;
use n0m1_core::process::{self, SpawnSpec};
use n0m1_core::state::ComponentState;
use nix::sys::signal::Signal;

use super::Manager;
use crate::launch::launch_args;
use crate::machine::{Effect, Input};

impl Manager {
    /// Performs one effect of component `id`; a spawn returns its answer.
    pub(super) fn perform(&mut self, id: &str, effect: Effect) -> Option<Input> {
        match effect {
            Effect::Spawn => return Some(self.spawn(id)),
            Effect::Terminate { pid } => self.terminate(id, pid),
            Effect::Kill { pid } => {
                process::signal_group(pid, Signal::SIGKILL);
                for (escaped, ticks) in self.escaped.get(id).into_iter().flatten() {
                    if process::is_same_process(*escaped, *ticks) {
                        process::signal_process(*escaped, Signal::SIGKILL);
                    }
                }
            }
            Effect::ReleasePidFile => {
                if let Some(pid_file) = self.pid_files.remove(id) {
                    pid_file.remove();
                }
                self.escaped.remove(id);
            }
            Effect::KillOrphans => self.kill_orphans(id),
            Effect::Record(record) => self
                .writer
                .event(record.manager(self.options.manager.clone())),
            Effect::SaveState => self.save_state(id),
            Effect::Forget => {
                self.components.remove(id);
            }
            Effect::RunProbe { program } => return Some(self.run_probe(id, program)),
            Effect::KillProbe { pid } => process::signal_group(pid, Signal::SIGKILL),
        }
        None
    }

    /// Starts a health probe (a group leader, our child, reaped by the loop). It gets the
    /// home and which component it checks, but not `N0M1_COMPONENT_ID`: it is not part of
    /// the component (an orphan sweep would take it for one).
    fn run_probe(&mut self, id: &str, program: std::path::PathBuf) -> Input {
        let home = &self.options.home;
        let checked = self
            .components
            .get(id)
            .and_then(|c| c.proc())
            .map_or(0, |p| p.pid);
        let log = home.probe_log(id);
        let spec = SpawnSpec {
            program,
            args: Vec::new(),
            env: vec![
                (ENV_HOME.to_owned(), home.root().as_os_str().to_owned()),
                (ENV_CHECKED_COMPONENT.to_owned(), id.into()),
                (ENV_CHECKED_PID.to_owned(), checked.to_string().into()),
            ],
            stdout: log.clone(),
            stderr: log,
            current_dir: home.root().to_path_buf(),
        };
        match process::spawn(&spec) {
            Ok(spawned) => {
                self.probes.insert(spawned.pid, id.to_owned());
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
    fn spawn(&mut self, id: &str) -> Input {
        let Some(row) = self.components.get(id).map(|c| c.row().clone()) else {
            return Input::LaunchFailed {
                reason: format!("{id} is no longer supervised"),
            };
        };
        let prepared = self
            .resolver
            .resolve(&row.base_script_name)
            .and_then(|program| {
                launch_args(row.launch_args_json.as_deref(), &row.run_type)
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
        let home = &self.options.home;
        // Under boot the log writer runs (boot starts it first); alone, only if it is up.
        let via_writer = self.under_boot || n0m1_core::logpipe::log_writer_running(home);
        let (stdout, stderr) = self
            .log_pipes
            .paths(home, LogOwner::Component, id, via_writer);
        let watchdog = self.components.get(id).and_then(|c| c.health().watchdog);
        // systemd gives WATCHDOG_PID the service's main pid, known only after the fork: a
        // POSIX shell sets it to its own pid ($$) and execs the program, which keeps that pid.
        let mut argv = program.leading_args.clone();
        argv.extend(args.iter().map(Into::into));
        let (program_path, argv) = match watchdog {
            None => (program.path.clone(), argv),
            Some(_) => {
                let mut wrapped: Vec<std::ffi::OsString> = vec![
                    "-c".into(),
                    "WATCHDOG_PID=$$; export WATCHDOG_PID; exec \"$0\" \"$@\"".into(),
                    program.path.clone().into_os_string(),
                ];
                wrapped.extend(argv);
                (std::path::PathBuf::from("/bin/sh"), wrapped)
            }
        };
        let spec = SpawnSpec {
            program: program_path,
            args: argv,
            env: {
                let mut env = vec![
                    (ENV_HOME.to_owned(), home.root().as_os_str().to_owned()),
                    (ENV_COMPONENT_ID.to_owned(), id.into()),
                ];
                if let Some(socket) = &self.notify {
                    env.push((
                        ENV_NOTIFY_SOCKET.to_owned(),
                        socket.path().as_os_str().to_owned(),
                    ));
                }
                if let Some(period) = watchdog {
                    env.push((
                        ENV_WATCHDOG_USEC.to_owned(),
                        period.as_micros().to_string().into(),
                    ));
                }
                env
            },
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
            Ok(file) => {
                self.pid_files.insert(id.to_owned(), file);
            }
            Err(error) => tracing::error!("{id}: cannot write its PID file: {error}"),
        }
        self.by_pid.insert(spawned.pid, id.to_owned());
        Input::Spawned {
            pid: spawned.pid,
            start_ticks: spawned.start_ticks,
            script_path: program.describe(),
        }
    }

    /// SIGTERM to the group, and to descendants that left it (setsid), found now while the
    /// tree still links them to the leader.
    fn terminate(&mut self, id: &str, pid: i32) {
        let processes = self.snapshot.get_or_insert_with(process::all_processes);
        let escaped: Vec<(i32, u64)> = process::descendants_in(processes, pid)
            .into_iter()
            .filter(|p| p.pgrp != pid)
            .map(|p| (p.pid, p.start_ticks))
            .collect();
        process::signal_group(pid, Signal::SIGTERM);
        for (escaped_pid, _) in &escaped {
            process::signal_process(*escaped_pid, Signal::SIGTERM);
        }
        self.escaped.insert(id.to_owned(), escaped);
    }

    /// Our children that are not a component's leader but carry component `id` of this home
    /// in their environment: what a dead leader left outside its group (`setsid`, double
    /// forks). They die with their subtree; the reaper collects them.
    fn kill_orphans(&mut self, id: &str) {
        let me = std::process::id() as i32;
        let home = self.options.home.root().to_string_lossy().into_owned();
        let processes = self.snapshot.get_or_insert_with(process::all_processes);
        let mut doomed = Vec::new();
        for orphan in processes
            .iter()
            .filter(|p| p.ppid == me && p.is_alive() && !self.by_pid.contains_key(&p.pid))
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

    /// True when the group led by `pid` is empty and every escaped descendant is gone.
    pub(super) fn tree_gone(&self, id: &str, pid: i32) -> bool {
        !process::group_exists(pid)
            && !self
                .escaped
                .get(id)
                .into_iter()
                .flatten()
                .any(|(escaped, ticks)| process::is_same_process(*escaped, *ticks))
    }

    fn save_state(&self, id: &str) {
        let Some(component) = self.components.get(id) else {
            return;
        };
        let proc = component.proc();
        self.writer.state(ComponentState {
            component_id: id.to_owned(),
            manager: self.options.manager.clone(),
            state: component.run_state(),
            pid: proc.map(|p| p.pid),
            pid_start_ticks: proc.map(|p| p.start_ticks),
            started_at: proc.map(|p| p.started_unix),
            restarts: component.restarts(),
            last_exit: component.last_exit().map(str::to_owned),
            request: None,
            ready: component.ready(),
            status_text: component.status_text().map(str::to_owned),
        });
    }
}
