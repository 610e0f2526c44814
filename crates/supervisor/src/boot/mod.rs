//! Boot: starts the managers named in config.json, in order, and keeps the critical ones
//! alive. It is a child subreaper, so components orphaned by a manager's death are re-parented
//! to boot and reaped here. Managers die with boot (parent-death signal), so killing boot
//! leaves nothing running.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use n0m1_core::cgroup::{Layout, home_id};
use n0m1_core::config::{Config, ConfigError, ManagerSpec};
use n0m1_core::db::{self, DatabaseFile, DbError};
use n0m1_core::home::{ENV_BOOT_PID, ENV_HOME, Home, HomeError, LOGD_STEM, LogOwner};
use n0m1_core::lifecycle::{LifecycleEvent, LifecycleRecord};
use n0m1_core::logpipe::LogPipes;
use n0m1_core::notify::{self, WatchdogPinger};
use n0m1_core::pidfile::{PidError, PidFile};
use n0m1_core::process::{self, SpawnSpec};
use n0m1_core::runtime::{Event, Runtime, SignalSet};
use n0m1_core::writer::Writer;

use crate::manager::become_subreaper;
use crate::reaper::{self, ExitCause};

mod health;
mod rules;
mod shutdown;
use rules::{ManagerVerdict, after_manager_death};

/// The component id boot's own events are logged under.
pub const BOOT_COMPONENT_ID: &str = "boot_system";

/// The component id of boot's events about a manager (`boot_daemon_manager`).
pub fn boot_event_id(manager: &str) -> String {
    format!("boot_{manager}")
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error(transparent)]
    Pid(#[from] PidError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{what}: {source}")]
    Os {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct BootOptions {
    pub home: Home,
    /// Where the manager binaries are (beside boot's own executable).
    pub bin_dir: PathBuf,
}

/// A manager whose heartbeat is older than this (or its health-check interval, if longer) is
/// considered hung.
const MIN_HEARTBEAT_TOLERANCE: Duration = Duration::from_secs(10);
/// No health verdict in a manager's first seconds: it may still be opening the database.
const HEALTH_GRACE: Duration = Duration::from_secs(5);
/// How often a running manager's heartbeat is looked at. On a timer of its own, not the
/// health-check interval: a manager that hangs just after a check is then found once its
/// heartbeat is `health_check_interval` old, not up to two intervals later.
const HEALTH_POLL: Duration = Duration::from_secs(1);
/// A manager that ran this long before dying is restarted at once; sooner, with backoff.
const STABLE_UPTIME: Duration = Duration::from_secs(10);
/// After the managers are gone, how long leftover processes get between SIGTERM and SIGKILL.
const SWEEP_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug)]
enum Phase {
    Scheduled {
        at: Instant,
    },
    Running {
        pid: i32,
        started: Instant,
        next_health: Instant,
        /// This run was already reported unhealthy (said once, until it recovers).
        reported_unhealthy: bool,
    },
    Stopping {
        pid: i32,
    },
    Backoff {
        until: Instant,
    },
    Down,
}

#[derive(Debug)]
struct Supervised {
    spec: ManagerSpec,
    phase: Phase,
    quick_deaths: u32,
    /// Removed from config.json by a reload: dropped once stopped.
    removed: bool,
}

pub struct Boot {
    options: BootOptions,
    config: Config,
    managers: Vec<Supervised>,
    journal: Writer,
    shutdown_deadline: Option<Instant>,
    /// The database file boot started on; set aside with the reason once it is gone.
    database: DatabaseFile,
    database_gone: Option<DbError>,
    /// The managers' log FIFOs, held open (see `n0m1_core::logpipe`).
    log_pipes: LogPipes,
    /// systemd (`Type=notify`) has been told READY=1.
    told_ready: bool,
    watchdog: WatchdogPinger,
    /// The log writer's last full-disk episode recorded, and whether its end was.
    disk_recorded: (u64, bool),
}

impl Boot {
    pub fn run(options: BootOptions) -> Result<(), BootError> {
        // Handlers first: a SIGTERM during start-up waits in the channel for a clean stop.
        let mut runtime =
            Runtime::start(SignalSet::Supervisor).map_err(|source| BootError::Os {
                what: "cannot install signal handlers",
                source,
            })?;
        become_subreaper().map_err(|error| BootError::Os {
            what: "cannot become a child subreaper",
            source: std::io::Error::other(error.to_string()),
        })?;
        options.home.ensure()?;
        let pid_file = PidFile::acquire(&options.home.boot_pid_file())?;
        // On a cgroup2 host with controllers, boot and the managers it starts live in a leaf
        // of the home's subtree, so the folders above them can hand controllers down.
        let cgroups = Layout::detect()
            .ok()
            .map(|layout| (home_id(options.home.root()), layout));
        if let Some((id, layout)) = &cgroups
            && let Err(error) = layout.move_supervisors(id)
        {
            tracing::warn!("{error}; the managers will say whether limits can be had");
        }
        let config = Config::load(&options.home.config_path())?;
        // Boot initialises the database (idempotent) so a systemd start on a fresh home works
        // and WAL is switched on before any other process opens the file.
        drop(db::initialise(&options.home.db_path())?);
        let database = DatabaseFile::capture(&options.home.db_path())?;
        let record = options.home.running_database_record();
        database.record(&record)?;
        let journal = Writer::start(&options.home.db_path())?;

        let mut boot = Boot {
            options,
            managers: Vec::new(),
            journal,
            shutdown_deadline: None,
            config: Config::default(),
            database,
            database_gone: None,
            log_pipes: LogPipes::default(),
            // Nobody to tell outside systemd.
            told_ready: std::env::var_os(notify::ENV_NOTIFY_SOCKET).is_none(),
            watchdog: WatchdogPinger::from_env(),
            disk_recorded: (0, false),
        };
        // A report left by a previous log writer is not this one's.
        let _ = std::fs::remove_file(boot.options.home.disk_report());
        boot.journal.event(
            LifecycleRecord::new(BOOT_COMPONENT_ID, LifecycleEvent::StartedSuccessfully)
                .pid(std::process::id() as i32)
                .message(format!("boot starting {} managers", config.managers.len())),
        );
        boot.apply_config(config);
        loop {
            boot.watchdog.ping_if_due();
            boot.on_timers(Instant::now());
            boot.tell_ready_once_up();
            if boot.shutdown_deadline.is_some() && boot.managers.iter().all(|m| !m.is_alive()) {
                break;
            }
            let wake = boot.next_deadline();
            match runtime.next(Some(wake)) {
                Some(Event::ChildExited) => boot.reap(),
                Some(Event::Shutdown) => boot.begin_shutdown(),
                Some(Event::Reload) => boot.reload(),
                Some(
                    Event::DatabaseChanged
                    | Event::DatabaseReplaced
                    | Event::ProcessExited { .. }
                    | Event::Readable,
                )
                | None => {}
            }
        }
        boot.sweep_leftovers();
        if let Some((id, layout)) = &cgroups {
            layout.existing_home(id).remove_empty();
        }
        boot.journal.event(
            LifecycleRecord::new(BOOT_COMPONENT_ID, LifecycleEvent::Stopped)
                .pid(std::process::id() as i32)
                .message("all managers stopped".to_owned()),
        );
        // Everything queued is written (waiting for a lock if need be) before the PID file goes.
        boot.journal.close();
        let _ = std::fs::remove_file(&record);
        pid_file.remove();
        match boot.database_gone {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }

    /// Starts what is new, stops what was removed, and updates the rest in place. The start
    /// order is the file's; each manager's `startup_delay` separates it from the next.
    fn apply_config(&mut self, config: Config) {
        let mut at = Instant::now();
        // The log writer first (it reads every manager's and component's output) and
        // stopped last; it is not in config.json.
        let specs: Vec<ManagerSpec> = std::iter::once(log_writer_spec())
            .chain(config.managers.iter().cloned())
            .collect();
        for spec in &specs {
            match self
                .managers
                .iter_mut()
                .find(|m| m.spec.binary == spec.binary)
            {
                Some(existing) => {
                    existing.spec = spec.clone();
                    if existing.removed || matches!(existing.phase, Phase::Down) && spec.critical {
                        existing.removed = false;
                        existing.phase = Phase::Scheduled { at };
                        at += spec.startup_delay.duration();
                    }
                }
                None => {
                    self.managers.push(Supervised {
                        spec: spec.clone(),
                        phase: Phase::Scheduled { at },
                        quick_deaths: 0,
                        removed: false,
                    });
                    at += spec.startup_delay.duration();
                }
            }
        }
        for supervised in &mut self.managers {
            if !specs
                .iter()
                .any(|spec| spec.binary == supervised.spec.binary)
            {
                supervised.removed = true;
                supervised.stop(&self.journal, "removed from config.json");
            }
        }
        self.managers.retain(|m| !m.removed || m.is_alive());
        self.config = config;
    }

    fn reload(&mut self) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        match Config::load(&self.options.home.config_path()) {
            Ok(config) => {
                self.journal.event(
                    LifecycleRecord::new(BOOT_COMPONENT_ID, LifecycleEvent::ConfigReloaded)
                        .pid(std::process::id() as i32)
                        .message(format!("{} managers configured", config.managers.len())),
                );
                self.apply_config(config);
            }
            Err(error) => {
                self.journal.event(
                    LifecycleRecord::new(BOOT_COMPONENT_ID, LifecycleEvent::Error)
                        .pid(std::process::id() as i32)
                        .message(format!("{error}; keeping the running configuration")),
                );
            }
        }
    }

    fn start_manager(&mut self, index: usize) {
        let home = &self.options.home;
        let supervised = &mut self.managers[index];
        let binary = supervised.spec.binary.clone();
        // The log writer's own output cannot go through itself.
        let (stdout, stderr) = if binary == LOGD_STEM {
            home.manager_logs(&binary)
        } else {
            self.log_pipes.paths(home, LogOwner::Manager, &binary, true)
        };
        let spec = SpawnSpec {
            program: self.options.bin_dir.join(&binary),
            args: vec!["--home".into(), home.root().as_os_str().to_owned()],
            env: vec![
                (ENV_HOME.to_owned(), home.root().as_os_str().to_owned()),
                (
                    ENV_BOOT_PID.to_owned(),
                    std::process::id().to_string().into(),
                ),
            ],
            stdout,
            stderr,
            current_dir: home.root().to_path_buf(),
        };
        let event_id = boot_event_id(&binary);
        match process::spawn(&spec) {
            Ok(spawned) => {
                let now = Instant::now();
                supervised.phase = Phase::Running {
                    pid: spawned.pid,
                    started: now,
                    next_health: now
                        + HEALTH_GRACE.max(supervised.spec.health_check_interval.duration()),
                    reported_unhealthy: false,
                };
                self.journal.event(
                    LifecycleRecord::new(&event_id, LifecycleEvent::ManagerStarted)
                        .pid(spawned.pid)
                        .manager(BOOT_COMPONENT_ID.to_owned())
                        .script_path(spec.program.display().to_string())
                        .message(format!("{} started", supervised.spec.name)),
                );
            }
            Err(error) => {
                self.journal.event(
                    LifecycleRecord::new(&event_id, LifecycleEvent::CriticalError)
                        .manager(BOOT_COMPONENT_ID.to_owned())
                        .message(format!("cannot start {}: {error}", supervised.spec.name)),
                );
                supervised.quick_deaths += 1;
                let delay = self.config.supervisor.backoff(supervised.quick_deaths);
                supervised.phase = Phase::Backoff {
                    until: Instant::now() + delay,
                };
            }
        }
    }

    fn reap(&mut self) {
        for (pid, cause) in reaper::reap_exited() {
            // Not a manager: a component re-parented to us after its manager died.
            let Some(index) = self.managers.iter().position(|m| m.pid() == Some(pid)) else {
                continue;
            };
            self.on_manager_exit(index, pid, cause);
        }
        self.managers.retain(|m| !m.removed || m.is_alive());
    }

    fn on_manager_exit(&mut self, index: usize, pid: i32, cause: ExitCause) {
        let how = cause.describe();
        let shutting_down = self.shutdown_deadline.is_some();
        let policy = self.config.supervisor.clone();
        let supervised = &mut self.managers[index];
        let event_id = boot_event_id(&supervised.spec.binary);
        let was_stopping = matches!(supervised.phase, Phase::Stopping { .. });
        let uptime = match supervised.phase {
            Phase::Running { started, .. } => started.elapsed(),
            _ => Duration::ZERO,
        };
        supervised.phase = Phase::Down;
        if was_stopping || shutting_down {
            self.journal.event(
                LifecycleRecord::new(&event_id, LifecycleEvent::ManagerStopped)
                    .pid(pid)
                    .manager(BOOT_COMPONENT_ID.to_owned())
                    .message(how),
            );
            return;
        }
        let mut message = format!(
            "{} exited: {how} after {:.1} s",
            supervised.spec.name,
            uptime.as_secs_f64()
        );
        match after_manager_death(
            supervised.spec.critical,
            uptime,
            supervised.quick_deaths,
            &policy,
        ) {
            ManagerVerdict::Restart {
                delay,
                quick_deaths,
            } => {
                supervised.quick_deaths = quick_deaths;
                supervised.phase = Phase::Backoff {
                    until: Instant::now() + delay,
                };
                message.push_str(&format!(
                    "; critical, restarting in {:.1} s",
                    delay.as_secs_f64()
                ));
            }
            ManagerVerdict::LeaveDown => message.push_str("; not critical, left down"),
        }
        self.journal.event(
            LifecycleRecord::new(&event_id, LifecycleEvent::ManagerCrashed)
                .pid(pid)
                .manager(BOOT_COMPONENT_ID.to_owned())
                .message(message),
        );
    }

    /// Under systemd (`NOTIFY_SOCKET` set), READY=1 once every manager holds its PID file,
    /// so `systemctl start n0m1` returns when the system is up, as `n0m1ctl start` does.
    fn tell_ready_once_up(&mut self) {
        if self.told_ready || self.shutdown_deadline.is_some() {
            return;
        }
        let home = &self.options.home;
        // A manager left down (not critical) holds nothing up.
        let up = self
            .managers
            .iter()
            .filter(|m| !matches!(m.phase, Phase::Down))
            .all(|m| {
                m.pid().is_some()
                    && PidFile::inspect(&home.pid_file(&m.spec.binary))
                        .is_ok_and(|status| status.live_pid() == m.pid())
            });
        if !up {
            return;
        }
        self.told_ready = true;
        let managers = self
            .managers
            .iter()
            .filter(|m| m.spec.binary != LOGD_STEM)
            .count();
        let status = format!("{managers} managers and the log writer running");
        if let Err(error) = notify::notify(&format!("READY=1\nSTATUS={status}")) {
            tracing::warn!("cannot tell systemd that n0m1 is up: {error}");
        }
    }
}

impl Supervised {
    fn pid(&self) -> Option<i32> {
        match self.phase {
            Phase::Running { pid, .. } | Phase::Stopping { pid } => Some(pid),
            _ => None,
        }
    }
    fn is_alive(&self) -> bool {
        self.pid().is_some()
    }
}

/// The log writer, supervised by boot like a critical manager (its heartbeat included).
fn log_writer_spec() -> ManagerSpec {
    ManagerSpec {
        binary: LOGD_STEM.to_owned(),
        name: "Log Writer".to_owned(),
        startup_delay: n0m1_core::config::Seconds(0.0),
        health_check_interval: n0m1_core::config::Seconds(30.0),
        critical: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_event_ids_follow_the_original() {
        assert_eq!(boot_event_id("daemon_manager"), "boot_daemon_manager");
    }
}
