//! The generic component manager: one type, parameterised by affinity, behind the
//! `daemon_manager`, `nano_manager` and `main_llm_manager` binaries.
//!
//! It owns the rows of `autorun_components` whose `manager_affinity` is its name and makes the
//! processes match them. All work happens on one thread, in `Manager::run`'s loop, driven by
//! `Event`s. Restarting is on the SIGCHLD path with nothing in between: the replacement is
//! spawned before a single database row is written, and rows are written afterwards in one
//! transaction (`Journal`), which is also what keeps a locked database from losing events.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use n0m1_core::config::{Config, SupervisorPolicy};
use n0m1_core::db::{self, DbError};
use n0m1_core::home::{
    ENV_BOOT_PID, ENV_COMPONENT_ID, ENV_HOME, Home, HomeError, validate_component_id,
};
use n0m1_core::lifecycle::{LifecycleEvent, LifecycleRecord};
use n0m1_core::pidfile::{PidError, PidFile, PidStatus};
use n0m1_core::process::{self, ProcStat, SpawnSpec};
use n0m1_core::schema::AUTORUN_COMPONENTS;
use n0m1_core::state::{self, ComponentState, RunState, unix_now};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use rusqlite::Connection;

use crate::events::{self, Event};
use crate::journal::{Journal, SUPERVISOR_BUSY_TIMEOUT};
use crate::launch::{LaunchError, RUN_TYPE_ONESHOT, ScriptResolver, launch_args};

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error(transparent)]
    Pid(#[from] PidError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{what}: {source}")]
    Os {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("boot (pid {boot_pid}) is gone before {manager} could start; not running as an orphan")]
    Orphaned { manager: String, boot_pid: i32 },
}

/// How a manager is set up; the binaries fill it from their flags.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    pub home: Home,
    /// The manager's name: its binary, PID file stem and `manager_affinity` value.
    pub manager: String,
    /// Where bundled component binaries live (beside the manager's own executable).
    pub bin_dir: PathBuf,
    /// How often the database is checked for changes.
    pub watch_interval: Duration,
}

/// A full pass over the table happens at least this often, in case a change was missed.
const PERIODIC_PASS: Duration = Duration::from_secs(5);
/// How long after SIGKILL a process may take to vanish before we call the stop failed.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// While a stopped leader's group still has members, how often to look again.
const GROUP_POLL: Duration = Duration::from_millis(20);

/// One row of `autorun_components`, as this manager reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ComponentRow {
    component_id: String,
    base_script_name: String,
    desired_active: bool,
    launch_args_json: Option<String>,
    run_type: String,
    modified: Option<String>,
}

impl ComponentRow {
    /// What, if changed while running, needs a restart to take effect.
    fn launch_key(&self) -> (String, Option<String>, String) {
        (
            self.base_script_name.clone(),
            self.launch_args_json.clone(),
            self.run_type.clone(),
        )
    }
    fn is_oneshot(&self) -> bool {
        self.run_type == RUN_TYPE_ONESHOT
    }
}

/// How a supervised process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExitCause {
    Code(i32),
    Signal(Signal),
    /// An adopted process is not our child: boot reaps it and its status is not ours to see.
    Unknown,
}

impl ExitCause {
    fn is_clean(self) -> bool {
        self == ExitCause::Code(0)
    }
    fn describe(self) -> String {
        match self {
            ExitCause::Code(code) => format!("exit code {code}"),
            ExitCause::Signal(signal) => format!("killed by signal {}", signal.as_str()),
            ExitCause::Unknown => "exited (status unknown: adopted process)".to_owned(),
        }
    }
}

/// A live process of a component.
#[derive(Debug)]
struct Proc {
    pid: i32,
    start_ticks: u64,
    started: Instant,
    started_unix: f64,
    /// Held for as long as we supervise the process; `None` if the file could not be taken.
    pid_file: Option<PidFile>,
    adopted: bool,
    launch_key: (String, Option<String>, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterStop {
    /// Stay down.
    Stop,
    /// Start again (the row changed while running, or a restart was asked for).
    Restart,
    /// The row is gone or moved to another manager: drop the component.
    Forget,
}

#[derive(Debug)]
enum Phase {
    Idle,
    Running(Proc),
    Stopping {
        proc: Proc,
        deadline: Instant,
        killed: bool,
        then: AfterStop,
        /// Set once the leader has exited; the stop completes when its group is empty too.
        leader_exit: Option<ExitCause>,
        /// Descendants that left the process group (setsid) at the time of the stop.
        escaped: Vec<(i32, u64)>,
    },
    Backoff {
        until: Instant,
    },
    Failed,
    Completed,
}

#[derive(Debug)]
struct Component {
    row: ComponentRow,
    phase: Phase,
    restarts: u32,
    quick_deaths: u32,
    last_exit: Option<String>,
    /// The row as it was when the component failed or completed: any later edit of it (a
    /// fixed argument, or any UPDATE, which moves `modified_timestamp`) gives it another go.
    settled_row: Option<ComponentRow>,
}

impl Component {
    fn run_state(&self) -> RunState {
        match self.phase {
            Phase::Idle => RunState::Stopped,
            Phase::Running(_) => RunState::Running,
            Phase::Stopping { .. } => RunState::Stopping,
            Phase::Backoff { .. } => RunState::Backoff,
            Phase::Failed => RunState::Failed,
            Phase::Completed => RunState::Completed,
        }
    }
    fn proc(&self) -> Option<&Proc> {
        match &self.phase {
            Phase::Running(proc) | Phase::Stopping { proc, .. } => Some(proc),
            _ => None,
        }
    }
}

pub struct Manager {
    options: ManagerOptions,
    policy: SupervisorPolicy,
    resolver: ScriptResolver,
    conn: Connection,
    journal: Journal,
    components: BTreeMap<String, Component>,
    sender: Sender<Event>,
    shutting_down: bool,
}

impl Manager {
    /// Runs the manager until SIGTERM/SIGINT (or boot's death) and all its components are
    /// stopped.
    pub fn run(options: ManagerOptions) -> Result<(), ManagerError> {
        // Handlers first: a SIGTERM that arrives while we start up must still mean a clean
        // stop (it waits in the channel), not death with a half-initialised PID file.
        let (sender, receiver) = mpsc::channel();
        events::watch_signals(sender.clone()).map_err(|source| ManagerError::Os {
            what: "cannot install signal handlers",
            source,
        })?;
        become_subreaper()?;
        die_with_boot(&options.manager)?;
        raise_open_file_limit();
        options.home.ensure()?;
        let own_pid_file = PidFile::acquire(&options.home.pid_file(&options.manager))?;
        let conn = db::open(&options.home.db_path())?;
        conn.busy_timeout(SUPERVISOR_BUSY_TIMEOUT)
            .map_err(|source| DbError::Sqlite {
                path: options.home.db_path(),
                source,
            })?;
        events::watch_database(
            options.home.db_path(),
            options.watch_interval,
            sender.clone(),
        );

        let mut manager = Manager {
            policy: SupervisorPolicy::default(),
            resolver: ScriptResolver::new(&options.home, options.bin_dir.clone()),
            conn,
            journal: Journal::default(),
            components: BTreeMap::new(),
            sender,
            shutting_down: false,
            options,
        };
        manager.load_policy();
        manager.journal.event(
            LifecycleRecord::new(
                &manager.options.manager,
                LifecycleEvent::StartedSuccessfully,
            )
            .pid(std::process::id() as i32)
            .message(format!(
                "{} supervising its components",
                manager.options.manager
            )),
        );
        manager.adopt_survivors();
        manager.reconcile();
        manager.flush();
        manager.event_loop(receiver, &own_pid_file);
        manager.journal.event(
            LifecycleRecord::new(&manager.options.manager, LifecycleEvent::Stopped)
                .pid(std::process::id() as i32)
                .message("all components stopped".to_owned()),
        );
        // The last flush may wait for a lock: nothing after it will retry.
        let _ = manager.conn.busy_timeout(db::BUSY_TIMEOUT);
        manager.flush();
        own_pid_file.remove();
        Ok(())
    }

    fn event_loop(&mut self, receiver: Receiver<Event>, own_pid_file: &PidFile) {
        let heartbeat_every = self
            .policy
            .heartbeat_interval
            .duration()
            .max(Duration::from_millis(100));
        let mut next_heartbeat = Instant::now();
        let mut next_pass = Instant::now() + PERIODIC_PASS;
        loop {
            let now = Instant::now();
            if now >= next_heartbeat {
                if let Err(error) = own_pid_file.touch() {
                    tracing::warn!(%error, "heartbeat failed");
                }
                next_heartbeat = now + heartbeat_every;
            }
            if now >= next_pass && !self.shutting_down {
                self.reconcile();
                next_pass = now + PERIODIC_PASS;
            }
            let wake = self
                .next_deadline()
                .unwrap_or(next_pass)
                .min(next_heartbeat)
                .min(next_pass);
            match receiver.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(Event::ChildExited) => self.reap(),
                Ok(Event::AdoptedExited { pid }) => self.adopted_exited(pid),
                Ok(Event::DatabaseChanged) => {
                    if !self.shutting_down {
                        self.reconcile();
                    }
                }
                Ok(Event::Reload) => {
                    self.load_policy();
                    self.reconcile();
                }
                Ok(Event::Shutdown) => self.begin_shutdown(),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.begin_shutdown(),
            }
            self.on_timers(Instant::now());
            self.flush();
            if self.shutting_down && self.components.values().all(|c| c.proc().is_none()) {
                return;
            }
        }
    }

    fn load_policy(&mut self) {
        match Config::load(&self.options.home.config_path()) {
            Ok(config) => self.policy = config.supervisor,
            Err(error) => {
                tracing::error!(%error, "keeping the previous supervisor policy");
                self.journal.event(
                    LifecycleRecord::new(&self.options.manager, LifecycleEvent::Error)
                        .message(format!("{error}; keeping the previous supervisor policy")),
                );
            }
        }
    }

    fn flush(&mut self) {
        self.journal.flush(&self.conn);
    }

    fn manager_name(&self) -> String {
        self.options.manager.clone()
    }

    fn save_state(&mut self, component_id: &str) {
        let Some(component) = self.components.get(component_id) else {
            return;
        };
        let proc = component.proc();
        self.journal.state(ComponentState {
            component_id: component_id.to_owned(),
            manager: self.options.manager.clone(),
            state: component.run_state(),
            pid: proc.map(|p| p.pid),
            pid_start_ticks: proc.map(|p| p.start_ticks),
            started_at: proc.map(|p| p.started_unix),
            restarts: component.restarts,
            last_exit: component.last_exit.clone(),
            reset_requested: false,
        });
    }

    fn load_rows(&self) -> rusqlite::Result<Vec<ComponentRow>> {
        // Rows written for the original may name the manager by its script.
        let mut statement = self.conn.prepare_cached(&format!(
            "SELECT component_id, base_script_name, desired_state, launch_args_json,
                    COALESCE(run_type_on_boot, 'PRIMARY_RUN'), CAST(modified_timestamp AS TEXT)
             FROM {AUTORUN_COMPONENTS} WHERE manager_affinity IN (?1, ?1 || '.py')"
        ))?;
        let rows = statement.query_map([&self.options.manager], |row| {
            Ok(ComponentRow {
                component_id: row.get(0)?,
                base_script_name: row.get(1)?,
                desired_active: row.get::<_, String>(2)? == "active",
                launch_args_json: row.get(3)?,
                run_type: row.get(4)?,
                modified: row.get(5)?,
            })
        })?;
        rows.collect()
    }

    /// Takes back components that are still running from a previous life of this manager
    /// (it was SIGKILLed and boot restarted it), instead of starting duplicates.
    fn adopt_survivors(&mut self) {
        let saved_rows = state::load_all(&self.conn, Some(&self.options.manager)).unwrap_or_else(|error| {
            tracing::error!(%error, "cannot read component_state; identifying survivors by environment only");
            Vec::new()
        });
        for row in self.load_rows().unwrap_or_default() {
            let id = row.component_id.clone();
            if validate_component_id(&id).is_err() {
                continue;
            }
            let pid_path = self.options.home.pid_file(&id);
            let Ok(PidStatus::Stale { pid: Some(pid) }) = PidFile::inspect(&pid_path) else {
                continue;
            };
            let saved = saved_rows.iter().find(|s| s.component_id == id);
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
                continue;
            };
            let pid_file = PidFile::acquire_for(&pid_path, pid).ok();
            if let Err(error) = events::watch_pid(pid, self.sender.clone()) {
                tracing::error!(%error, component = %id, "cannot watch adopted process");
                continue;
            }
            let started_unix = saved.and_then(|s| s.started_at).unwrap_or_else(unix_now);
            let age = Duration::from_secs_f64((unix_now() - started_unix).max(0.0));
            let proc = Proc {
                pid,
                start_ticks: stat.start_ticks,
                started: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
                started_unix,
                pid_file,
                adopted: true,
                launch_key: row.launch_key(),
            };
            let mut component = Component::new(row, Phase::Running(proc));
            component.restarts = saved.map_or(0, |s| s.restarts);
            component.last_exit = saved.and_then(|s| s.last_exit.clone());
            self.components.insert(id.clone(), component);
            self.journal.event(
                LifecycleRecord::new(&id, LifecycleEvent::Adopted)
                    .pid(pid)
                    .manager(self.manager_name())
                    .message(format!(
                        "still running after a manager restart; watching pid {pid}"
                    )),
            );
            self.save_state(&id);
        }
    }

    /// Makes the processes match the table.
    fn reconcile(&mut self) {
        let rows = match self.load_rows() {
            Ok(rows) => rows,
            Err(error) => {
                tracing::error!(%error, "cannot read {AUTORUN_COMPONENTS}; will try again");
                return;
            }
        };
        let resets: HashSet<String> = state::load_all(&self.conn, Some(&self.options.manager))
            .map(|rows| {
                rows.into_iter()
                    .filter(|r| r.reset_requested)
                    .map(|r| r.component_id)
                    .collect()
            })
            .unwrap_or_default();
        let mut seen = HashSet::new();
        for row in rows {
            let id = row.component_id.clone();
            seen.insert(id.clone());
            if resets.contains(&id) {
                self.journal.clear_reset(&id);
            }
            if let Err(error) = validate_component_id(&id) {
                if !self.components.contains_key(&id) {
                    self.journal.event(
                        LifecycleRecord::new(&id, LifecycleEvent::StartFailed)
                            .manager(self.manager_name())
                            .message(error.to_string()),
                    );
                    self.components
                        .insert(id.clone(), Component::new(row, Phase::Failed));
                }
                continue;
            }
            let component = self
                .components
                .entry(id.clone())
                .or_insert_with(|| Component::new(row.clone(), Phase::Idle));
            let reset = resets.contains(&id)
                || component
                    .settled_row
                    .as_ref()
                    .is_some_and(|settled| *settled != row);
            component.row = row;
            self.apply(&id, reset);
        }
        let gone: Vec<String> = self
            .components
            .keys()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            let running = self
                .components
                .get(&id)
                .is_some_and(|c| matches!(c.phase, Phase::Running(_)));
            if running {
                self.begin_stop(
                    &id,
                    AfterStop::Forget,
                    "row removed or moved to another manager",
                );
            } else if let Some(Component {
                phase: Phase::Stopping { then, .. },
                ..
            }) = self.components.get_mut(&id)
            {
                *then = AfterStop::Forget;
            } else {
                self.components.remove(&id);
            }
        }
    }

    /// Moves one component toward its row's desired state.
    fn apply(&mut self, id: &str, reset: bool) {
        let Some(component) = self.components.get_mut(id) else {
            return;
        };
        let active = component.row.desired_active;
        match (&mut component.phase, active) {
            (Phase::Idle, true) => {
                component.quick_deaths = 0;
                self.start(id, None);
            }
            (Phase::Failed | Phase::Completed, true) if reset => {
                component.quick_deaths = 0;
                component.settled_row = None;
                self.journal.event(
                    LifecycleRecord::new(id, LifecycleEvent::Reset)
                        .manager(self.manager_name())
                        .message("reset by an operator; starting again".to_owned()),
                );
                self.start(id, None);
            }
            (Phase::Running(proc), true) if proc.launch_key != component.row.launch_key() => {
                self.begin_stop(
                    id,
                    AfterStop::Restart,
                    "its row changed; restarting with the new settings",
                );
            }
            (Phase::Stopping { then, .. }, true) if *then == AfterStop::Stop => {
                *then = AfterStop::Restart
            }
            (Phase::Running(_), false) => {
                self.begin_stop(id, AfterStop::Stop, "desired state is inactive")
            }
            (Phase::Stopping { then, .. }, false) if *then == AfterStop::Restart => {
                *then = AfterStop::Stop
            }
            (Phase::Backoff { .. } | Phase::Failed | Phase::Completed, false) => {
                component.phase = Phase::Idle;
                component.settled_row = None;
                self.save_state(id);
            }
            _ => {}
        }
    }

    /// Spawns a component. `cause` (say, the CRASHED event that led here) is journalled first,
    /// but only after the spawn, so nothing slows the restart.
    fn start(&mut self, id: &str, cause: Option<LifecycleRecord>) {
        let manager = self.manager_name();
        let Some(component) = self.components.get_mut(id) else {
            return;
        };
        let row = component.row.clone();
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
                if let Some(cause) = cause {
                    self.journal.event(cause);
                }
                self.settle_failed(id, LifecycleEvent::StartFailed, &launch_failure(&error));
                return;
            }
        };
        let home = &self.options.home;
        let (stdout, stderr) = home.component_logs(id);
        let mut argv = program.leading_args.clone();
        argv.extend(args.iter().map(Into::into));
        let spec = SpawnSpec {
            program: program.path.clone(),
            args: argv,
            env: vec![
                (ENV_HOME.to_owned(), home.root().as_os_str().to_owned()),
                (ENV_COMPONENT_ID.to_owned(), id.into()),
            ],
            stdout,
            stderr,
            current_dir: home.root().to_path_buf(),
        };
        let spawned = process::spawn(&spec);
        if let Some(cause) = cause {
            self.journal.event(cause);
        }
        let script_path = program.describe();
        let spawned = match spawned {
            Ok(spawned) => spawned,
            Err(error) => {
                self.journal.event(
                    LifecycleRecord::new(id, LifecycleEvent::StartFailed)
                        .manager(manager)
                        .run_type(row.run_type.clone())
                        .script_path(script_path)
                        .message(error.to_string()),
                );
                self.after_quick_death(id, error.to_string());
                return;
            }
        };
        let pid_path = home.pid_file(id);
        let pid_file = match PidFile::acquire_for(&pid_path, spawned.pid) {
            Ok(file) => Some(file),
            Err(error) => {
                tracing::error!(%error, component = id, "cannot write PID file");
                None
            }
        };
        let Some(component) = self.components.get_mut(id) else {
            return;
        };
        component.phase = Phase::Running(Proc {
            pid: spawned.pid,
            start_ticks: spawned.start_ticks,
            started: Instant::now(),
            started_unix: unix_now(),
            pid_file,
            adopted: false,
            launch_key: row.launch_key(),
        });
        self.journal.event(
            LifecycleRecord::new(id, LifecycleEvent::StartAttempt)
                .pid(spawned.pid)
                .manager(manager)
                .run_type(row.run_type)
                .script_path(script_path)
                .message(format!(
                    "spawned as pid {} (process group leader)",
                    spawned.pid
                )),
        );
        self.save_state(id);
    }

    /// Sends SIGTERM to the component's whole tree and starts the grace period.
    fn begin_stop(&mut self, id: &str, then: AfterStop, reason: &str) {
        self.begin_stop_with(id, then, reason, &process::all_processes());
    }

    /// `begin_stop` with a /proc snapshot shared by a batch of stops (a shutdown of 500
    /// components reads /proc once, not 500 times).
    fn begin_stop_with(&mut self, id: &str, then: AfterStop, reason: &str, processes: &[ProcStat]) {
        let manager = self.manager_name();
        let timeout = self.policy.stop_timeout.duration();
        let Some(component) = self.components.get_mut(id) else {
            return;
        };
        let Phase::Running(proc) = std::mem::replace(&mut component.phase, Phase::Idle) else {
            return;
        };
        // Descendants that left the group would survive a group signal: find them now,
        // while the tree still links them to the leader.
        let escaped: Vec<(i32, u64)> = process::descendants_in(processes, proc.pid)
            .into_iter()
            .filter(|p| p.pgrp != proc.pid)
            .map(|p| (p.pid, p.start_ticks))
            .collect();
        process::signal_group(proc.pid, Signal::SIGTERM);
        for (pid, _) in &escaped {
            process::signal_process(*pid, Signal::SIGTERM);
        }
        self.journal.event(
            LifecycleRecord::new(id, LifecycleEvent::StopRequested)
                .pid(proc.pid)
                .manager(manager)
                .message(format!(
                    "{reason}; SIGTERM sent to process group {}",
                    proc.pid
                )),
        );
        component.phase = Phase::Stopping {
            proc,
            deadline: Instant::now() + timeout,
            killed: false,
            then,
            leader_exit: None,
            escaped,
        };
        self.save_state(id);
    }

    fn begin_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        let ids: Vec<String> = self.components.keys().cloned().collect();
        for id in ids {
            match self.components.get_mut(&id).map(|c| &mut c.phase) {
                Some(Phase::Running(_)) => {
                    self.begin_stop(&id, AfterStop::Stop, "manager shutting down")
                }
                Some(Phase::Stopping { then, .. }) => *then = AfterStop::Stop,
                Some(phase @ Phase::Backoff { .. }) => {
                    *phase = Phase::Idle;
                    self.save_state(&id);
                }
                _ => {}
            }
        }
    }

    /// Reaps every exited child (SIGCHLDs coalesce, so one event may stand for many).
    fn reap(&mut self) {
        loop {
            let (pid, cause) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), ExitCause::Code(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    (pid.as_raw(), ExitCause::Signal(signal))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            };
            // Orphaned grandchildren are reaped here too (we are a subreaper); they belong to
            // no component and need nothing more.
            if let Some(id) = self.component_of(pid, false) {
                self.on_exit(&id, cause);
            }
        }
        self.check_stopping_groups();
    }

    fn adopted_exited(&mut self, pid: i32) {
        if let Some(id) = self.component_of(pid, true) {
            self.on_exit(&id, ExitCause::Unknown);
            self.check_stopping_groups();
        }
    }

    fn component_of(&self, pid: i32, adopted: bool) -> Option<String> {
        self.components
            .iter()
            .find(|(_, c)| {
                c.proc()
                    .is_some_and(|p| p.pid == pid && p.adopted == adopted)
            })
            .map(|(id, _)| id.clone())
    }

    /// A component's leader exited.
    fn on_exit(&mut self, id: &str, cause: ExitCause) {
        let manager = self.manager_name();
        let min_uptime = self.policy.min_uptime.duration();
        let shutting_down = self.shutting_down;
        let Some(component) = self.components.get_mut(id) else {
            return;
        };
        component.last_exit = Some(cause.describe());
        match &mut component.phase {
            Phase::Stopping { leader_exit, .. } => {
                *leader_exit = Some(cause);
            }
            Phase::Running(_) => {
                let Phase::Running(proc) = std::mem::replace(&mut component.phase, Phase::Idle)
                else {
                    return;
                };
                // Whatever the leader left in its group goes with it, so the replacement
                // never runs beside a half of its predecessor.
                process::signal_group(proc.pid, Signal::SIGKILL);
                let uptime = proc.started.elapsed();
                if let Some(pid_file) = proc.pid_file {
                    pid_file.remove();
                }
                let event = if cause.is_clean() {
                    LifecycleEvent::Exited
                } else {
                    LifecycleEvent::Crashed
                };
                let record = LifecycleRecord::new(id, event)
                    .pid(proc.pid)
                    .manager(manager.clone())
                    .message(format!(
                        "{} after {:.3} s",
                        cause.describe(),
                        uptime.as_secs_f64()
                    ));
                if component.row.is_oneshot() && cause.is_clean() {
                    component.phase = Phase::Completed;
                    component.settled_row = Some(component.row.clone());
                    self.journal.event(
                        LifecycleRecord::new(id, LifecycleEvent::Stopped)
                            .pid(proc.pid)
                            .manager(manager)
                            .message("one-shot run completed".to_owned()),
                    );
                    self.save_state(id);
                } else if shutting_down || !component.row.desired_active {
                    self.journal.event(record);
                    self.save_state(id);
                } else if uptime >= min_uptime {
                    component.quick_deaths = 0;
                    component.restarts += 1;
                    self.start(id, Some(record));
                } else {
                    self.journal.event(record);
                    self.after_quick_death(id, cause.describe());
                }
            }
            _ => {}
        }
    }

    /// A death before `min_uptime`: back off, or give up after too many in a row.
    fn after_quick_death(&mut self, id: &str, what: String) {
        let policy = self.policy.clone();
        let Some(component) = self.components.get_mut(id) else {
            return;
        };
        component.quick_deaths += 1;
        if component.quick_deaths >= policy.max_quick_deaths {
            let message = format!(
                "{} quick deaths in a row (each within {} s of starting; last: {what}); \
                 staying down until `n0m1ctl enable {id}`",
                component.quick_deaths, policy.min_uptime.0
            );
            self.settle_failed(id, LifecycleEvent::Failed, &message);
            return;
        }
        let delay = policy.backoff(component.quick_deaths);
        component.phase = Phase::Backoff {
            until: Instant::now() + delay,
        };
        component.restarts += 1;
        self.journal.event(
            LifecycleRecord::new(id, LifecycleEvent::RestartScheduled)
                .manager(self.options.manager.clone())
                .message(format!(
                    "quick death {} of {} ({what}); restarting in {:.1} s",
                    component.quick_deaths,
                    policy.max_quick_deaths,
                    delay.as_secs_f64()
                )),
        );
        self.save_state(id);
    }

    fn settle_failed(&mut self, id: &str, event: LifecycleEvent, message: &str) {
        let manager = self.manager_name();
        let Some(component) = self.components.get_mut(id) else {
            return;
        };
        component.phase = Phase::Failed;
        component.settled_row = Some(component.row.clone());
        component.last_exit = Some(message.to_owned());
        self.journal.event(
            LifecycleRecord::new(id, event)
                .manager(manager)
                .run_type(component.row.run_type.clone())
                .message(message.to_owned()),
        );
        self.save_state(id);
    }

    /// Completes stops whose leader has exited and whose group and escaped descendants are gone.
    fn check_stopping_groups(&mut self) {
        let waiting: Vec<String> = self
            .components
            .iter()
            .filter(|(_, c)| {
                matches!(
                    c.phase,
                    Phase::Stopping {
                        leader_exit: Some(_),
                        ..
                    }
                )
            })
            .map(|(id, _)| id.clone())
            .collect();
        if waiting.is_empty() {
            return;
        }
        for id in waiting {
            let Some(Phase::Stopping { proc, escaped, .. }) =
                self.components.get(&id).map(|c| &c.phase)
            else {
                continue;
            };
            let escaped_alive = escaped
                .iter()
                .any(|(pid, ticks)| process::is_same_process(*pid, *ticks));
            if !process::group_exists(proc.pid) && !escaped_alive {
                self.finish_stop(&id);
            }
        }
    }

    fn finish_stop(&mut self, id: &str) {
        let manager = self.manager_name();
        let Some(component) = self.components.get_mut(id) else {
            return;
        };
        let Phase::Stopping {
            proc,
            killed,
            then,
            leader_exit,
            ..
        } = std::mem::replace(&mut component.phase, Phase::Idle)
        else {
            return;
        };
        let event = if killed {
            LifecycleEvent::StoppedForcefully
        } else {
            LifecycleEvent::StoppedSuccessfully
        };
        let how = leader_exit.map_or_else(|| "gone".to_owned(), ExitCause::describe);
        self.journal.event(
            LifecycleRecord::new(id, event)
                .pid(proc.pid)
                .manager(manager)
                .message(format!(
                    "{how} after {:.3} s",
                    proc.started.elapsed().as_secs_f64()
                )),
        );
        if let Some(pid_file) = proc.pid_file {
            pid_file.remove();
        }
        match then {
            AfterStop::Restart if !self.shutting_down && component.row.desired_active => {
                component.restarts += 1;
                self.start(id, None);
            }
            AfterStop::Forget => {
                self.save_state(id);
                self.components.remove(id);
            }
            _ => self.save_state(id),
        }
    }

    fn on_timers(&mut self, now: Instant) {
        let mut due_backoff = Vec::new();
        let mut due_kill = Vec::new();
        let mut any_leader_gone = false;
        for (id, component) in &self.components {
            match &component.phase {
                Phase::Backoff { until } if *until <= now => due_backoff.push(id.clone()),
                Phase::Stopping { deadline, .. } if *deadline <= now => due_kill.push(id.clone()),
                Phase::Stopping {
                    leader_exit: Some(_),
                    ..
                } => any_leader_gone = true,
                _ => {}
            }
        }
        for id in due_backoff {
            if self.shutting_down {
                if let Some(c) = self.components.get_mut(&id) {
                    c.phase = Phase::Idle;
                }
                self.save_state(&id);
            } else {
                self.start(&id, None);
            }
        }
        for id in due_kill {
            self.escalate_stop(&id, now);
        }
        if any_leader_gone {
            self.check_stopping_groups();
        }
    }

    /// The grace period is over: SIGKILL, then, if even that does not work, give up loudly.
    fn escalate_stop(&mut self, id: &str, now: Instant) {
        let manager = self.manager_name();
        let Some(component) = self.components.get_mut(id) else {
            return;
        };
        let Phase::Stopping {
            proc,
            deadline,
            killed,
            escaped,
            ..
        } = &mut component.phase
        else {
            return;
        };
        if !*killed {
            process::signal_group(proc.pid, Signal::SIGKILL);
            for (pid, ticks) in escaped.iter() {
                if process::is_same_process(*pid, *ticks) {
                    process::signal_process(*pid, Signal::SIGKILL);
                }
            }
            *killed = true;
            *deadline = now + KILL_GRACE;
            return;
        }
        let pid = proc.pid;
        self.journal.event(
            LifecycleRecord::new(id, LifecycleEvent::StopFailed)
                .pid(pid)
                .manager(manager)
                .message(format!(
                    "process group {pid} survived SIGKILL for {} s (uninterruptible sleep?); no longer waiting",
                    KILL_GRACE.as_secs()
                )),
        );
        if let Phase::Stopping { proc, .. } = std::mem::replace(&mut component.phase, Phase::Idle)
            && let Some(pid_file) = proc.pid_file
        {
            pid_file.remove();
        }
        component.last_exit = Some("stop failed: survived SIGKILL".to_owned());
        self.save_state(id);
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.components
            .values()
            .filter_map(|c| match &c.phase {
                Phase::Backoff { until } => Some(*until),
                Phase::Stopping {
                    deadline,
                    leader_exit: Some(_),
                    ..
                } => Some((*deadline).min(Instant::now() + GROUP_POLL)),
                Phase::Stopping { deadline, .. } => Some(*deadline),
                _ => None,
            })
            .min()
    }
}

impl Component {
    fn new(row: ComponentRow, phase: Phase) -> Component {
        Component {
            row,
            phase,
            restarts: 0,
            quick_deaths: 0,
            last_exit: None,
            settled_row: None,
        }
    }
}

fn launch_failure(error: &LaunchError) -> String {
    format!("cannot start: {error}")
}

/// Orphans of our components are re-parented to us, not to PID 1 (which does not reap here),
/// so they can be reaped and nothing is left as a zombie.
pub fn become_subreaper() -> Result<(), ManagerError> {
    nix::sys::prctl::set_child_subreaper(true).map_err(|errno| ManagerError::Os {
        what: "cannot become a child subreaper",
        source: errno.into(),
    })
}

/// Started by boot: die with boot (SIGTERM on its death), and refuse to start if boot is
/// already gone, so a manager never runs on as an orphan.
fn die_with_boot(manager: &str) -> Result<(), ManagerError> {
    let Some(boot_pid) = std::env::var(ENV_BOOT_PID)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return Ok(());
    };
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(|errno| ManagerError::Os {
        what: "cannot set the parent-death signal",
        source: errno.into(),
    })?;
    if nix::unistd::getppid().as_raw() != boot_pid {
        return Err(ManagerError::Orphaned {
            manager: manager.to_owned(),
            boot_pid,
        });
    }
    Ok(())
}

/// Each supervised component holds a PID file open; 500 components need more than the
/// usual soft limit of 1024 descriptors once logs and pidfds are counted.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
