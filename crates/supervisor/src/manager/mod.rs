//! The generic component manager behind the `daemon_manager`, `nano_manager` and
//! `main_llm_manager` binaries: an executor around the pure `machine::Component`s.
//!
//! It owns the rows of `autorun_components` whose `manager_affinity` is its name. Its one
//! thread turns runtime events (SIGCHLD, pidfd exits, row changes, timers, SIGTERM) into
//! machine inputs and performs the effects that come back (`executor`). It never writes to
//! the database itself: rows go to the lifecycle writer's thread, so a restart never waits
//! for a flush or another process's lock. Survivors of a previous life are found by `adopt`.

mod adopt;
mod executor;
mod gates;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use n0m1_core::components::{self, ComponentRow};
use n0m1_core::config::{Config, ResourceSettings, Retention, SupervisorPolicy};
use n0m1_core::db::{self, DatabaseFile, DbError};
use n0m1_core::health::{self, HealthCheck};
use n0m1_core::home::{ENV_BOOT_PID, Home, HomeError};
use n0m1_core::lifecycle::{LifecycleEvent, LifecycleRecord};
use n0m1_core::notify::NotifySocket;
use n0m1_core::pidfile::{PidError, PidFile};
use n0m1_core::process::{self, ProcStat};
use n0m1_core::resources::{self, ResourceSample};
use n0m1_core::runtime::{Event, PidWatcher, Runtime, SignalSet};
use n0m1_core::state::{self, Request, unix_now};
use n0m1_core::writer::Writer;
use rusqlite::Connection;

use crate::launch::ScriptResolver;
use crate::machine::{Component, Context, Input};
use crate::reaper::{self, ExitCause};

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
    resolver: ScriptResolver,
    /// Reads only (rows, saved state); every write goes through `writer`.
    conn: Connection,
    runtime: Runtime,
    writer: Writer,
    pid_watcher: Option<PidWatcher>,
    components: BTreeMap<String, Component>,
    /// Live pid → component, so an exit finds its component in O(1).
    by_pid: HashMap<i32, String>,
    pid_files: HashMap<String, PidFile>,
    /// Descendants that left a stopping component's group, found when the stop began.
    escaped: HashMap<String, Vec<(i32, u64)>>,
    /// One /proc snapshot per loop turn, taken only if a stop needs it.
    snapshot: Option<Vec<ProcStat>>,
    shutting_down: bool,
    /// The file the manager opened; set aside with the reason once it is deleted or replaced.
    database: DatabaseFile,
    database_gone: Option<DbError>,
    /// Where components send sd_notify datagrams (`NOTIFY_SOCKET`); `None` if it could not
    /// be bound (then readiness is unknown, and said once in the log).
    notify: Option<NotifySocket>,
    /// Running health probes: pid → the component they check.
    probes: HashMap<i32, String>,
    /// The last error reported for each component's `component_health` row, so a bad row is
    /// said once, not on every pass.
    health_errors: HashMap<String, String>,
    /// The same for `component_dependencies` rows.
    dependency_errors: HashMap<String, String>,
    /// The valid dependencies as last read (for the stop order at shutdown).
    dependencies: Vec<n0m1_core::dependencies::Dependency>,
    /// At shutdown: components not yet told to stop (their dependents go first).
    shutdown_pending: std::collections::BTreeSet<String>,
    /// The components' log FIFOs, held open (see `n0m1_core::logpipe`).
    log_pipes: n0m1_core::logpipe::LogPipes,
    /// Started by boot (which runs the log writer).
    under_boot: bool,
    /// How often the components' trees are sampled, and how long samples are kept.
    resources: ResourceSettings,
    retention: Retention,
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
        die_with_boot(&options.manager)?;
        raise_open_file_limit();
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
            rows_fingerprint(conn, &manager_name)
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

        let mut manager = Manager {
            policy: SupervisorPolicy::default(),
            resolver: ScriptResolver::new(&options.home, options.bin_dir.clone()),
            conn,
            runtime,
            writer,
            pid_watcher,
            components: BTreeMap::new(),
            by_pid: HashMap::new(),
            pid_files: HashMap::new(),
            escaped: HashMap::new(),
            snapshot: None,
            shutting_down: false,
            database,
            database_gone: None,
            notify,
            probes: HashMap::new(),
            health_errors: HashMap::new(),
            dependency_errors: HashMap::new(),
            dependencies: Vec::new(),
            shutdown_pending: Default::default(),
            log_pipes: Default::default(),
            under_boot: std::env::var_os(ENV_BOOT_PID).is_some(),
            resources: ResourceSettings::default(),
            retention: Retention::default(),
            options,
        };
        manager.load_policy();
        let me = std::process::id() as i32;
        manager.writer.event(
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
        manager.adopt_survivors();
        manager.reconcile();
        manager.event_loop(&own_pid_file);
        manager.writer.event(
            LifecycleRecord::new(&manager.options.manager, LifecycleEvent::Stopped)
                .pid(me)
                .message("all components stopped"),
        );
        // Everything queued is written (waiting for a lock if need be) before the PID file
        // goes: `n0m1ctl stop` returns once it is gone.
        manager.writer.close();
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
            let now = Instant::now();
            if now >= next_sample {
                self.sample_resources();
                next_sample = now + self.resources.interval.duration();
            }
            if now >= next_prune {
                let max_age = self.retention.max_age_days.0 * 86_400.0;
                self.writer
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
                .components
                .values()
                .filter_map(|c| c.deadline(now))
                .fold(
                    next_heartbeat
                        .min(next_pass)
                        .min(next_sample)
                        .min(next_prune),
                    Instant::min,
                );
            match self.runtime.next(Some(wake)) {
                Some(Event::ChildExited) => self.reap(),
                Some(Event::ProcessExited { pid }) => self.adopted_exited(pid),
                Some(Event::DatabaseChanged) if !self.shutting_down => self.reconcile(),
                Some(Event::Reload) => {
                    self.load_policy();
                    self.writer.event(
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
                Some(Event::Shutdown) => self.begin_shutdown(),
                Some(Event::DatabaseReplaced) => self.database_replaced(),
                Some(Event::Readable) => self.notifications(),
                Some(Event::DatabaseChanged) | None => {}
            }
            self.on_timers(Instant::now());
            self.check_trees();
            if self.shutting_down {
                self.continue_shutdown();
            }
            self.snapshot = None;
            if self.shutting_down && self.components.values().all(|c| c.proc().is_none()) {
                return;
            }
        }
    }

    fn load_policy(&mut self) {
        match Config::load(&self.options.home.config_path()) {
            Ok(config) => {
                self.policy = config.supervisor;
                self.resources = config.resources;
                self.retention = config.retention;
            }
            Err(error) => self.writer.event(
                LifecycleRecord::new(&self.options.manager, LifecycleEvent::Error)
                    .message(format!("{error}; keeping the previous supervisor policy")),
            ),
        }
    }

    /// Feeds `input` to a component and performs the effects, and the effects of what they
    /// feed back, in order: a spawn's answer is handled after the rest of the batch, so the
    /// record of a crash is queued before the record of its replacement.
    fn dispatch(&mut self, id: &str, input: Input) {
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let cx = Context {
                now: Instant::now(),
                unix_now: unix_now(),
                policy: &self.policy,
                shutting_down: self.shutting_down,
            };
            let Some(component) = self.components.get_mut(id) else {
                return;
            };
            for effect in component.handle(input, &cx) {
                if let Some(answer) = self.perform(id, effect) {
                    queue.push_back(answer);
                }
            }
        }
    }

    /// One `component_resource_log` row per running component: its tree's RSS and CPU time,
    /// from one /proc snapshot for all of them. Off the restart path (a timer, not a SIGCHLD).
    fn sample_resources(&mut self) {
        let running: Vec<(&String, i32)> = self
            .components
            .iter()
            .filter_map(|(id, c)| Some((id, c.proc()?.pid)))
            .collect();
        if running.is_empty() {
            return;
        }
        let snapshot = process::all_processes();
        let sampled_at = unix_now();
        let samples = running
            .into_iter()
            .map(|(id, pid)| {
                let usage = resources::tree_usage(&snapshot, pid);
                ResourceSample {
                    component_id: id.clone(),
                    manager: self.options.manager.clone(),
                    sampled_at,
                    rss_bytes: usage.rss_bytes,
                    cpu_seconds: usage.cpu_seconds,
                    processes: usage.processes,
                }
            })
            .collect();
        self.writer.resources(samples);
    }

    /// Makes the machines see the table.
    fn reconcile(&mut self) {
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
        let ids: HashSet<&str> = rows.iter().map(|r| r.component_id.as_str()).collect();
        let mut checks = self.health_checks(&ids);
        let (mut gates, held) = self.dependency_gates(&ids);
        let mut seen = HashSet::new();
        for row in rows {
            let id = row.component_id.clone();
            let health = checks.remove(&id).unwrap_or_default();
            let gate = gates.remove(&id).unwrap_or_default();
            let request = requests.get(&id).copied();
            if let Some(request) = request {
                self.writer.clear_request(&id, request);
            }
            self.components
                .entry(id.clone())
                .or_insert_with(|| Component::new(row.clone()));
            // Before the row: a spawn it leads to then carries the watchdog settings.
            self.dispatch(&id, Input::Health(health));
            self.dispatch(&id, Input::Dependencies(gate));
            // Disabled while dependents still run: it stops after them (the watcher brings
            // us back here as their states change).
            let running = self.components.get(&id).is_some_and(|c| c.proc().is_some());
            if !row.desired_active && running && held.contains(&id) {
                seen.insert(id);
                continue;
            }
            self.dispatch(&id, Input::Row { row, request });
            seen.insert(id);
        }
        let gone: Vec<String> = self
            .components
            .keys()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.dispatch(&id, Input::RowGone);
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
                    .components
                    .iter()
                    .map(|(id, c)| (id.clone(), c.health().clone()))
                    .collect();
            }
        };
        let hooks = self.options.home.hooks_dir();
        let mut checks = HashMap::new();
        let mut reported = HashMap::new();
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
                    let message = error.to_string();
                    if self.health_errors.get(&row.component_id) != Some(&message) {
                        self.writer.event(
                            LifecycleRecord::new(&row.component_id, LifecycleEvent::Error)
                                .manager(self.options.manager.clone())
                                .message(message.clone()),
                        );
                    }
                    reported.insert(row.component_id, message);
                }
            }
        }
        self.health_errors = reported;
        checks
    }

    /// Every waiting sd_notify datagram, each given to the component whose process group
    /// sent it (the kernel names the sender; a component leads its own group, so a helper
    /// such as `systemd-notify` run by its script counts as the component).
    fn notifications(&mut self) {
        let Some(socket) = &self.notify else {
            return;
        };
        let mut received = Vec::new();
        while let Some(datagram) = socket.receive() {
            received.push(datagram);
        }
        for (pid, notices) in received {
            let owner = self.by_pid.get(&pid).cloned().or_else(|| {
                let group = ProcStat::read(pid)?.pgrp;
                self.by_pid.get(&group).cloned()
            });
            match owner {
                Some(id) if !notices.is_empty() => self.dispatch(&id, Input::Notified(notices)),
                Some(_) => {}
                None => tracing::warn!(
                    "notification from pid {pid}, which belongs to no component of {}; ignored",
                    self.options.manager
                ),
            }
        }
    }

    /// The rows the manager acts on are no longer in the file at the database path: it
    /// stops its components and exits with the reason rather than supervise from a file
    /// nobody reads (boot then stops the system: see `Boot::database_replaced`).
    fn database_replaced(&mut self) {
        let Err(error) = self.database.check() else {
            return;
        };
        tracing::error!("{error}");
        self.writer.event(
            LifecycleRecord::new(&self.options.manager, LifecycleEvent::Error)
                .pid(std::process::id() as i32)
                .message(error.to_string()),
        );
        self.database_gone = Some(error);
        self.begin_shutdown();
    }

    fn begin_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.shutdown_pending = self.components.keys().cloned().collect();
        self.continue_shutdown();
    }

    /// Stops in reverse dependency order: a component is told to stop once none of its
    /// dependents of this manager is still running. Everything that may stop is signalled in
    /// the same turn (one /proc snapshot for all); their exits are collected by the loop.
    fn continue_shutdown(&mut self) {
        if self.shutdown_pending.is_empty() {
            return;
        }
        let running = |manager: &Manager, id: &str| {
            manager
                .components
                .get(id)
                .is_some_and(|c| c.proc().is_some())
        };
        let mut now: Vec<String> = self
            .shutdown_pending
            .iter()
            .filter(|id| {
                !n0m1_core::dependencies::dependents(id, &self.dependencies)
                    .any(|dependent| dependent != id.as_str() && running(self, dependent))
            })
            .cloned()
            .collect();
        let stopping = self
            .components
            .values()
            .any(|c| c.run_state() == n0m1_core::state::RunState::Stopping);
        if now.is_empty() && !stopping {
            // Nothing can go first (dependencies added into a cycle while running): all at once.
            now = self.shutdown_pending.iter().cloned().collect();
        }
        for id in now {
            self.shutdown_pending.remove(&id);
            self.dispatch(&id, Input::Shutdown);
        }
    }

    /// Reaps every exited child; orphaned grandchildren are reaped here too (we are a
    /// subreaper) and belong to no component.
    fn reap(&mut self) {
        for (pid, cause) in reaper::reap_exited() {
            self.exited(pid, cause, false);
        }
    }

    fn adopted_exited(&mut self, pid: i32) {
        self.exited(pid, ExitCause::Unknown, true);
    }

    fn exited(&mut self, pid: i32, cause: ExitCause, adopted: bool) {
        if let Some(id) = self.probes.remove(&pid) {
            let ok = cause == ExitCause::Code(0);
            let how = cause.describe();
            self.dispatch(
                &id,
                Input::ProbeDone {
                    pid: Some(pid),
                    ok,
                    how,
                },
            );
            return;
        }
        let Some(id) = self.by_pid.get(&pid).cloned() else {
            return;
        };
        let ours = self
            .components
            .get(&id)
            .and_then(Component::proc)
            .is_some_and(|p| p.pid == pid && p.adopted == adopted);
        if ours {
            self.by_pid.remove(&pid);
            self.dispatch(&id, Input::Exited { pid, cause });
        }
    }

    fn on_timers(&mut self, now: Instant) {
        let due: Vec<String> = self
            .components
            .iter()
            .filter(|(_, c)| c.deadline(now).is_some_and(|d| d <= now))
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
            .components
            .iter()
            .filter_map(|(id, c)| Some((id, c.awaiting_tree()?)))
            .filter(|(id, pid)| self.tree_gone(id, *pid))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.dispatch(&id, Input::TreeGone);
        }
    }
}

/// What the database watcher compares to decide whether this manager must look again: its
/// rows and its pending operator requests, nothing else.
fn rows_fingerprint(conn: &Connection, manager: &str) -> rusqlite::Result<u64> {
    let rows: Vec<ComponentRow> = components::of_manager(conn, manager)?;
    let mut requests: Vec<(String, Request)> =
        operator_requests(conn, manager).into_iter().collect();
    requests.sort_by(|a, b| a.0.cmp(&b.0));
    let checks = health::all(conn)?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    rows.hash(&mut hasher);
    requests.hash(&mut hasher);
    checks.hash(&mut hasher);
    gates::fingerprint(conn, &mut hasher)?;
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
    process::die_with_boot().map_err(|error| match error {
        process::DieWithBootError::Os(source) => ManagerError::Os {
            what: "cannot set the parent-death signal",
            source,
        },
        process::DieWithBootError::Orphaned { boot_pid } => ManagerError::Orphaned {
            manager: manager.to_owned(),
            boot_pid,
        },
    })
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
