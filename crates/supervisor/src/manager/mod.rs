//! The generic component manager behind the `daemon_manager`, `nano_manager` and
//! `main_llm_manager` binaries: an executor around the pure `machine::Component`s.
//!
//! It owns the rows of `autorun_components` whose `manager_affinity` is its name. Its one
//! thread turns runtime events (SIGCHLD, pidfd exits, row changes, timers, SIGTERM) into
//! machine inputs and performs the effects that come back (`executor`). It never writes to
//! the database itself: rows go to the lifecycle writer's thread, so a restart never waits
//! for a flush or another process's lock. Survivors of a previous life are found by `adopt`.

mod adopt;
mod cgroups;
mod executor;
mod gates;
mod observe;
mod rows;
mod setup;
pub use setup::become_subreaper;
mod shutdown;
mod slot;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use n0m1_core::config::{Config, ResourceSettings, Retention, SupervisorPolicy};
use n0m1_core::db::{self, DatabaseFile, DbError};
use n0m1_core::home::{ENV_BOOT_PID, Home, HomeError};
use n0m1_core::lifecycle::{LifecycleEvent, LifecycleRecord};
use n0m1_core::notify::NotifySocket;
use n0m1_core::pidfile::{PidError, PidFile};
use n0m1_core::runtime::{Event, PidWatcher, Runtime, SignalSet};
use n0m1_core::state::unix_now;
use n0m1_core::writer::Writer;
use rusqlite::Connection;

use crate::launch::ScriptResolver;
use crate::machine::{Context, Effect, Input};
use crate::reaper::{self, ExitCause};
use executor::Executor;
use slot::{PidOwner, Slot};

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
/// How long the manager's own reads wait for a lock: short, the loop must get back to work.
const READ_BUSY_TIMEOUT: Duration = Duration::from_millis(100);

pub struct Manager {
    options: ManagerOptions,
    policy: SupervisorPolicy,
    /// Reads only (rows, saved state); every write goes through the executor's writer.
    conn: Connection,
    runtime: Runtime,
    pid_watcher: Option<PidWatcher>,
    /// Every supervised component, by id.
    slots: BTreeMap<String, Slot>,
    /// Performs the machines' effects; holds the writer, the log FIFOs and the pid index.
    exec: Executor,
    shutting_down: bool,
    /// The file the manager opened; set aside with the reason once it is deleted or replaced.
    database: DatabaseFile,
    database_gone: Option<DbError>,
    /// Where components send sd_notify datagrams (`NOTIFY_SOCKET`); `None` if it could not
    /// be bound (then readiness is unknown, and said once in the log).
    notify: Option<NotifySocket>,
    /// Datagrams from no component of ours since the last warning about them.
    stray_notices: observe::StrayNotices,
    /// The valid dependencies as last read (for the stop order at shutdown).
    dependencies: Vec<n0m1_core::dependencies::Dependency>,
    /// How often the components' trees are sampled, and how long samples are kept.
    resources: ResourceSettings,
    retention: Retention,
    /// config.json's `models.memory_max`: the model components' default memory limit.
    model_memory_max: Option<u64>,
    /// The cgroup hierarchies found at start (`None`: limits unavailable).
    cgroup_layout: Option<n0m1_core::cgroup::Layout>,
}

impl Manager {
    /// Runs the manager until SIGTERM/SIGINT (or boot's death) and all its components are
    /// stopped.
    pub fn run(options: ManagerOptions) -> Result<(), ManagerError> {
        // Handlers first: a SIGTERM that arrives while we start up must still mean a clean
        // stop (it waits in the channel), not death with a half-initialised PID file.
        let runtime = Runtime::start(SignalSet::Supervisor).map_err(|source| ManagerError::Os {
            what: "cannot install signal handlers",
            source,
        })?;
        become_subreaper()?;
        setup::die_with_boot(&options.manager)?;
        setup::raise_open_file_limit();
        options.home.ensure()?;
        let own_pid_file = PidFile::acquire(&options.home.pid_file(&options.manager))?;
        let db_path = options.home.db_path();
        let conn = db::open(&db_path)?;
        let database = DatabaseFile::capture(&db_path)?;
        conn.busy_timeout(READ_BUSY_TIMEOUT)
            .map_err(|source| DbError::Sqlite {
                path: db_path.clone(),
                source,
            })?;
        let writer = Writer::start(&db_path)?;
        let manager_name = options.manager.clone();
        runtime.watch_database_with(database.clone(), options.watch_interval, move |conn| {
            rows::rows_fingerprint(conn, &manager_name)
        });
        let mut runtime = runtime;
        let notify = match NotifySocket::bind(&options.home.notify_socket(&options.manager)) {
            Ok(socket) => {
                match socket.as_fd().try_clone_to_owned() {
                    Ok(fd) => runtime.watch_readable(fd),
                    Err(error) => tracing::error!("cannot poll the notification socket: {error}"),
                }
                Some(socket)
            }
            Err(error) => {
                tracing::error!("{error}");
                None
            }
        };
        let pid_watcher = runtime
            .pid_watcher()
            .map_err(|error| {
                tracing::error!("cannot watch adopted processes ({error}); survivors will be stopped by boot, not adopted");
            })
            .ok();

        let exec = Executor {
            resolver: ScriptResolver::new(&options.home, options.bin_dir.clone()),
            home: options.home.clone(),
            manager: options.manager.clone(),
            writer,
            log_pipes: Default::default(),
            notify_socket: notify.as_ref().map(|socket| socket.path().to_path_buf()),
            under_boot: std::env::var_os(ENV_BOOT_PID).is_some(),
            snapshot: None,
            pids: HashMap::new(),
            cgroups: None,
            log_settings: Default::default(),
            released: Vec::new(),
        };
        let mut manager = Manager {
            policy: SupervisorPolicy::default(),
            conn,
            runtime,
            pid_watcher,
            slots: BTreeMap::new(),
            exec,
            shutting_down: false,
            database,
            database_gone: None,
            notify,
            stray_notices: Default::default(),
            dependencies: Vec::new(),
            resources: ResourceSettings::default(),
            retention: Retention::default(),
            model_memory_max: None,
            cgroup_layout: None,
            options,
        };
        let _ = manager.load_policy();
        let me = std::process::id() as i32;
        manager.exec.writer.event(
            LifecycleRecord::new(
                &manager.options.manager,
                LifecycleEvent::StartedSuccessfully,
            )
            .pid(me)
            .message(format!(
                "{} supervising its components",
                manager.options.manager
            )),
        );
        manager.find_cgroups();
        manager.adopt_survivors();
        manager.reconcile();
        manager.event_loop(&own_pid_file);
        if let Some(cgroups) = &manager.exec.cgroups {
            cgroups.remove_empty();
        }
        manager.exec.writer.event(
            LifecycleRecord::new(&manager.options.manager, LifecycleEvent::Stopped)
                .pid(me)
                .message("all components stopped"),
        );
        // Everything queued is written (waiting for a lock if need be) before the PID file
        // goes: `n0m1ctl stop` returns once it is gone.
        manager.exec.writer.close();
        own_pid_file.remove();
        match manager.database_gone {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }

    fn event_loop(&mut self, own_pid_file: &PidFile) {
        let heartbeat_every = self
            .policy
            .heartbeat_interval
            .duration()
            .max(Duration::from_millis(100));
        let mut next_heartbeat = Instant::now();
        let mut next_pass = Instant::now() + PERIODIC_PASS;
        let mut next_sample = Instant::now() + self.resources.interval.duration();
        let mut next_prune = Instant::now();
        loop {
            // An exit waiting is handled before any periodic work: a restart never waits
            // behind a pass's SQL.
            if self.runtime.take_child_exited() {
                self.reap();
            }
            let now = Instant::now();
            if now >= next_sample {
                self.sample_resources();
                next_sample = now + self.resources.interval.duration();
            }
            if now >= next_prune {
                let max_age = self.retention.max_age_days.0 * 86_400.0;
                self.exec
                    .writer
                    .prune_resources(&self.options.manager, unix_now() - max_age);
                next_prune = now + self.retention.prune_interval.duration();
            }
            if now >= next_heartbeat {
                if let Err(error) = own_pid_file.touch() {
                    tracing::warn!("heartbeat failed: {error}");
                }
                next_heartbeat = now + heartbeat_every;
            }
            if now >= next_pass {
                if !self.shutting_down {
                    self.reconcile();
                }
                next_pass = now + PERIODIC_PASS;
            }
            let wake = self
                .slots
                .values()
                .filter_map(|slot| slot.machine.deadline(now))
                .fold(
                    next_heartbeat
                        .min(next_pass)
                        .min(next_sample)
                        .min(next_prune),
                    Instant::min,
                );
            match self.runtime.next(Some(wake)) {
                Some(Event::ChildExited) => self.reap(),
                Some(Event::ProcessExited { pid }) => self.exited(pid, ExitCause::Unknown, true),
                Some(Event::DatabaseChanged) if !self.shutting_down => self.reconcile(),
                Some(Event::Reload) => self.reload(),
                Some(Event::Shutdown) => self.begin_shutdown(),
                Some(Event::DatabaseReplaced) => self.database_replaced(),
                Some(Event::Readable) => self.notifications(),
                Some(Event::DatabaseChanged) | None => {}
            }
            self.on_timers(Instant::now());
            self.check_trees();
            self.settle_cgroups();
            if self.shutting_down {
                self.continue_shutdown();
            }
            self.exec.snapshot = None;
            if self.shutting_down && self.slots.values().all(|s| s.machine.proc().is_none()) {
                return;
            }
        }
    }

    fn reload(&mut self) {
        // A config that cannot be read is an ERROR (load_policy says so) and nothing else:
        // CONFIG_RELOADED would claim settings that were not applied.
        if !self.load_policy() {
            return;
        }
        self.exec.writer.event(
            LifecycleRecord::new(&self.options.manager, LifecycleEvent::ConfigReloaded)
                .pid(std::process::id() as i32)
                .message(format!(
                    "supervisor settings applied (stop_timeout {} s, backoff {}-{} s, max_quick_deaths {}); no component restarted",
                    self.policy.stop_timeout.0,
                    self.policy.backoff_initial.0,
                    self.policy.backoff_max.0,
                    self.policy.max_quick_deaths
                )),
        );
        if !self.shutting_down {
            self.reconcile();
        }
    }

    /// A probe's whole tree ends with the probe: what is left in its group, and what left the
    /// group (setsid) and, orphaned, came to us as the subreaper, known by the
    /// `N0M1_CHECKED_COMPONENT` it inherited. Something not yet orphaned is found after the
    /// next run, so nothing piles up.
    fn end_probe_tree(&mut self, id: &str, probe_pid: i32) {
        use nix::sys::signal::Signal;
        n0m1_core::process::signal_group(probe_pid, Signal::SIGKILL);
        let me = std::process::id() as i32;
        let home = self.options.home.root().display().to_string();
        for stat in n0m1_core::process::all_processes() {
            if stat.ppid == me
                && !self.exec.pids.contains_key(&stat.pid)
                && n0m1_core::process::environ_has(
                    stat.pid,
                    n0m1_core::home::ENV_CHECKED_COMPONENT,
                    id,
                )
                && n0m1_core::process::environ_has(stat.pid, n0m1_core::home::ENV_HOME, &home)
            {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(stat.pid), Signal::SIGKILL);
            }
        }
    }

    /// Applies config.json's settings; false (and an ERROR event) when it cannot be read.
    fn load_policy(&mut self) -> bool {
        match Config::load(&self.options.home.config_path()) {
            Ok(config) => {
                self.policy = config.supervisor;
                self.resources = config.resources;
                self.retention = config.retention;
                self.model_memory_max = config.models.memory_max.map(|size| size.0);
                self.exec.log_settings = config.logs;
                true
            }
            Err(error) => {
                self.exec.writer.event(
                    LifecycleRecord::new(&self.options.manager, LifecycleEvent::Error)
                        .message(format!("{error}; keeping the previous supervisor policy")),
                );
                false
            }
        }
    }

    /// Feeds `input` to a component and performs the effects, and the effects of what they
    /// feed back, in order: a spawn's answer is handled after the rest of the batch, so the
    /// record of a crash is queued before the record of its replacement.
    fn dispatch(&mut self, id: &str, input: Input) {
        self.dispatch_batch(id, input);
        self.exec.close_released();
    }

    fn dispatch_batch(&mut self, id: &str, input: Input) {
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let cx = Context {
                now: Instant::now(),
                unix_now: unix_now(),
                policy: &self.policy,
                shutting_down: self.shutting_down,
            };
            let Some(slot) = self.slots.get_mut(id) else {
                return;
            };
            let mut forget = false;
            for effect in slot.machine.handle(input, &cx) {
                forget |= effect == Effect::Forget;
                if let Some(answer) = self.exec.perform(id, slot, effect) {
                    queue.push_back(answer);
                }
            }
            if forget {
                if let Some(cgroup) = self.slots.remove(id).and_then(|slot| slot.cgroup)
                    && !cgroup.remove()
                {
                    cgroup.kill();
                }
                return;
            }
        }
    }

    /// Reaps every exited child; orphaned grandchildren are reaped here too (we are a
    /// subreaper) and belong to no component.
    fn reap(&mut self) {
        for (pid, cause) in reaper::reap_exited() {
            self.exited(pid, cause, false);
        }
    }

    /// A leader or a probe of ours ended (`adopted`: an adopted leader, seen through its
    /// pidfd).
    fn exited(&mut self, pid: i32, cause: ExitCause, adopted: bool) {
        match self.exec.pids.get(&pid).cloned() {
            Some(PidOwner::Probe(id)) if !adopted => {
                self.exec.pids.remove(&pid);
                self.end_probe_tree(&id, pid);
                let input = Input::ProbeDone {
                    pid: Some(pid),
                    ok: cause == ExitCause::Code(0),
                    how: cause.describe(),
                };
                self.dispatch(&id, input);
            }
            Some(PidOwner::Leader(id)) => {
                let ours = self
                    .slots
                    .get(&id)
                    .and_then(|slot| slot.machine.proc())
                    .is_some_and(|p| p.pid == pid && p.adopted == adopted);
                if ours {
                    self.exec.pids.remove(&pid);
                    if let Some(detail) = self.new_oom_kill(&id, pid) {
                        self.dispatch(&id, Input::OutOfMemory { pid, detail });
                    }
                    self.dispatch(&id, Input::Exited { pid, cause });
                }
            }
            _ => {}
        }
    }

    fn on_timers(&mut self, now: Instant) {
        let due: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.machine.deadline(now).is_some_and(|d| d <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.dispatch(&id, Input::Tick);
        }
    }

    /// Completes stops whose leader has exited once its group and escaped descendants are
    /// gone too.
    fn check_trees(&mut self) {
        let gone: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, slot)| {
                slot.machine
                    .awaiting_tree()
                    .is_some_and(|pid| executor::tree_gone(slot, pid))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.dispatch(&id, Input::TreeGone);
        }
    }
}
