//! `start`, `stop` and `config check`.

use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use n0m1_core::cgroup::HomeCgroups;
use n0m1_core::home::ENV_HOME;
use n0m1_core::pidfile::PidStatus;
use n0m1_core::process::{self, SpawnSpec};
use n0m1_core::state;
use n0m1_core::{Config, Home, PidFile, db};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Boot and its managers must be up within this long (startup delays are a few seconds).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Margin on top of the components' stop timeout for boot and the managers to exit.
const STOP_MARGIN: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(25);

fn bin_dir() -> anyhow::Result<std::path::PathBuf> {
    process::own_bin_dir().context("cannot find the folder of the n0m1ctl executable")
}

/// The last lines of a log, to show why something did not start.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Takes the home's n0m1ctl lock, waiting (and saying so) while another start or stop holds it.
fn take_turn(home: &Home) -> anyhow::Result<std::fs::File> {
    let path = home.ctl_lock();
    let file = n0m1_core::home::open_private_append(&path)?;
    match file.try_lock() {
        Ok(()) => return Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            eprintln!("waiting for another n0m1ctl start or stop in this home to finish");
        }
        Err(std::fs::TryLockError::Error(error)) => {
            return Err(error).with_context(|| format!("locking {}", path.display()));
        }
    }
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

pub fn start(home: &Home) -> anyhow::Result<()> {
    home.ensure()
        .with_context(|| format!("preparing home {}", home.root().display()))?;
    let _turn = take_turn(home)?;
    start_locked(home)
}

/// `restart`: one turn for both halves, so no other start slips in between.
pub fn restart(home: &Home) -> anyhow::Result<()> {
    home.ensure()
        .with_context(|| format!("preparing home {}", home.root().display()))?;
    let _turn = take_turn(home)?;
    stop_locked(home, false)?;
    start_locked(home)
}

fn start_locked(home: &Home) -> anyhow::Result<()> {
    if let PidStatus::Live { pid } = PidFile::inspect(&home.boot_pid_file())? {
        crate::check_running_database(home)?;
        println!(
            "n0m1 is already running (boot pid {})",
            pid.map_or("?".into(), |p| p.to_string())
        );
        return Ok(());
    }
    let config = Config::load(&home.config_path())?;
    if !home.db_path().exists() {
        println!(
            "database {} does not exist: creating a fresh one",
            home.db_path().display()
        );
    }
    db::initialise(&home.db_path())?;
    let (stdout, stderr) = home.manager_logs(n0m1_core::home::BOOT_LOG_STEM);
    let spec = SpawnSpec {
        program: bin_dir()?.join("boot_system"),
        args: vec!["--home".into(), home.root().as_os_str().to_owned()],
        env: vec![(ENV_HOME.to_owned(), home.root().as_os_str().to_owned())],
        stdout,
        stderr: stderr.clone(),
        current_dir: home.root().to_path_buf(),
    };
    let boot = process::spawn(&spec)?;
    let deadline = Instant::now() + START_TIMEOUT;
    let startup: Duration = config
        .managers
        .iter()
        .map(|m| m.startup_delay.duration())
        .sum();
    let deadline = deadline.max(Instant::now() + startup + Duration::from_secs(10));
    loop {
        // Boot is our child until we exit: if it dies early we see why.
        if let Ok(WaitStatus::Exited(_, _) | WaitStatus::Signaled(..)) =
            waitpid(Pid::from_raw(boot.pid), Some(WaitPidFlag::WNOHANG))
        {
            // Another boot (systemd's, say) won the PID file first: the system is running.
            if let Some(pid) = PidFile::inspect(&home.boot_pid_file())?.live_pid() {
                println!("n0m1 is already running (boot pid {pid})");
                return Ok(());
            }
            bail!(
                "boot_system exited during start-up; see {}:\n{}",
                stderr.display(),
                tail(&stderr, 10)
            );
        }
        let boot_up = PidFile::inspect(&home.boot_pid_file())?.live_pid() == Some(boot.pid);
        let missing: Vec<&str> = config
            .managers
            .iter()
            .filter(|m| {
                PidFile::inspect(&home.pid_file(&m.binary)).map_or(true, |s| s.live_pid().is_none())
            })
            .map(|m| m.binary.as_str())
            .collect();
        if boot_up && missing.is_empty() {
            println!("n0m1 started (boot pid {}; managers: {})", boot.pid, {
                let names: Vec<&str> = config.managers.iter().map(|m| m.binary.as_str()).collect();
                names.join(", ")
            });
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "n0m1 did not come up within {} s (waiting for: {}); boot pid {} is left running; see {} and {}",
                (deadline - Instant::now()).as_secs(),
                if boot_up {
                    missing.join(", ")
                } else {
                    "boot_system".to_owned()
                },
                boot.pid,
                stderr.display(),
                home.manager_logs_dir().display()
            );
        }
        sleep(POLL);
    }
}

/// Live processes of the system that have a PID file: boot, managers, components.
fn live_pid_files(home: &Home) -> Vec<(String, Option<i32>)> {
    let Ok(entries) = std::fs::read_dir(home.pids_dir()) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
        .filter_map(|e| match PidFile::inspect(&e.path()) {
            Ok(PidStatus::Live { pid }) => {
                Some((e.file_name().to_string_lossy().into_owned(), pid))
            }
            _ => None,
        })
        .collect()
}

/// Components whose recorded process (pid plus start time) is still alive.
fn live_components(home: &Home) -> Vec<(String, i32)> {
    let Ok(conn) = db::open(&home.db_path()) else {
        return Vec::new();
    };
    state::load_all(&conn, None)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|s| match (s.pid, s.pid_start_ticks) {
            (Some(pid), Some(ticks)) if process::is_same_process(pid, ticks) => {
                Some((s.component_id, pid))
            }
            _ => None,
        })
        .collect()
}

pub fn stop(home: &Home, force: bool) -> anyhow::Result<()> {
    // A home that does not exist has nothing running and needs no lock file.
    if !home.root().is_dir() {
        println!("n0m1 is not running");
        return Ok(());
    }
    let _turn = take_turn(home)?;
    stop_locked(home, force)
}

fn stop_locked(home: &Home, force: bool) -> anyhow::Result<()> {
    let config = Config::load(&home.config_path()).unwrap_or_default();
    let boot = PidFile::inspect(&home.boot_pid_file())?;
    let was_running = boot.live_pid().is_some();
    if let Some(pid) = boot.live_pid() {
        let signal = if force {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        process::signal_process(pid, signal);
        let deadline = Instant::now() + config.supervisor.stop_timeout.duration() + STOP_MARGIN;
        while PidFile::inspect(&home.boot_pid_file())?
            .live_pid()
            .is_some()
            && Instant::now() < deadline
            && !force
        {
            sleep(POLL);
        }
    }
    // Whatever is still alive now (a forced stop, a boot that did not finish, managers or
    // components started by hand or orphaned) is stopped here, group by group.
    let cgroups = crate::limits::home_cgroups(home);
    let leftovers = |home: &Home| {
        let mut pids: Vec<(String, i32)> = live_pid_files(home)
            .into_iter()
            .filter_map(|(name, pid)| Some((name, pid?)))
            .collect();
        pids.extend(live_components(home));
        // Descendants that left their group and lost their manager (a forced stop, a killed
        // manager) are found by the environment n0m1 gave them.
        pids.extend(
            process::home_processes(home.root())
                .into_iter()
                .map(|pid| ("descendant".to_owned(), pid)),
        );
        // And whatever is in the home's cgroups, however it left both.
        pids.extend(
            cgroups
                .iter()
                .flat_map(HomeCgroups::pids)
                .map(|pid| ("in its cgroup".to_owned(), pid)),
        );
        pids.sort_by_key(|p| p.1);
        pids.dedup_by_key(|p| p.1);
        pids
    };
    let first = leftovers(home);
    if !first.is_empty() {
        let signal = if force {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        for (_, pid) in &first {
            process::signal_group(*pid, signal);
            process::signal_process(*pid, signal);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !leftovers(home).is_empty() && Instant::now() < deadline {
            sleep(POLL);
        }
        for (_, pid) in leftovers(home) {
            process::signal_group(pid, Signal::SIGKILL);
            process::signal_process(pid, Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !leftovers(home).is_empty() && Instant::now() < deadline {
            sleep(POLL);
        }
    }
    let survivors = leftovers(home);
    if !survivors.is_empty() {
        let names: Vec<String> = survivors
            .iter()
            .map(|(n, p)| format!("{n} (pid {p})"))
            .collect();
        bail!("these processes survived SIGKILL: {}", names.join(", "));
    }
    // Nothing runs in them any more: no cgroup of this home is left behind.
    if let Some(cgroups) = &cgroups {
        cgroups.remove_empty();
    }
    // Every lock is free now, so any PID file left is stale: remove it.
    if let Ok(entries) = std::fs::read_dir(home.pids_dir()) {
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            if path.extension().is_some_and(|x| x == "pid")
                && matches!(PidFile::inspect(&path), Ok(PidStatus::Stale { .. }))
            {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing stale {}", path.display()))?;
            }
        }
    }
    // Boot's record of its database file goes with boot (a killed boot leaves it behind).
    match std::fs::remove_file(home.running_database_record()) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(error)
                .with_context(|| format!("removing {}", home.running_database_record().display()));
        }
        _ => {}
    }
    if was_running || !first.is_empty() {
        println!("n0m1 stopped");
    } else {
        println!("n0m1 is not running");
    }
    Ok(())
}

/// `reload`: checks config.json first (a bad file is refused here, not half-applied), then
/// SIGHUP to boot and to every running manager.
pub fn reload(home: &Home) -> anyhow::Result<()> {
    let config = Config::load(&home.config_path())
        .context("config.json was not sent to the running system")?;
    let Some(boot) = PidFile::inspect(&home.boot_pid_file())?.live_pid() else {
        bail!("n0m1 is not running: nothing to reload (`n0m1ctl start` reads config.json)");
    };
    process::signal_process(boot, Signal::SIGHUP);
    let mut told = vec![format!("boot_system (pid {boot})")];
    // The log writer takes the `logs` settings, each manager the `supervisor` ones.
    let stems = std::iter::once(n0m1_core::home::LOGD_STEM)
        .chain(config.managers.iter().map(|m| m.binary.as_str()));
    for stem in stems {
        if let Some(pid) = PidFile::inspect(&home.pid_file(stem))?.live_pid() {
            process::signal_process(pid, Signal::SIGHUP);
            told.push(format!("{stem} (pid {pid})"));
        }
    }
    println!("reloading config.json: SIGHUP sent to {}", told.join(", "));
    Ok(())
}

pub fn config_check(home: &Home, json: bool) -> anyhow::Result<()> {
    let config = Config::load(&home.config_path())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&config)?);
        return Ok(());
    }
    println!("{}: ok", home.config_path().display());
    for m in &config.managers {
        println!(
            "  {:<18} {:<18} startup_delay {} s, health_check_interval {} s, {}",
            m.binary,
            m.name,
            m.startup_delay.0,
            m.health_check_interval.0,
            if m.critical {
                "critical"
            } else {
                "not critical"
            }
        );
    }
    let p = &config.supervisor;
    println!(
        "  supervisor: min_uptime {} s, backoff {}..{} s, FAILED after {} quick deaths, a crash loop at {} exits in {} s, stop_timeout {} s",
        p.min_uptime.0,
        p.backoff_initial.0,
        p.backoff_max.0,
        p.max_quick_deaths,
        p.max_crashes_in_window,
        p.crash_window.0,
        p.stop_timeout.0
    );
    println!(
        "  logs: rotated at {} bytes, {} kept; resources sampled every {} s; retention {} days",
        config.logs.max_bytes,
        config.logs.keep,
        config.resources.interval.0,
        config.retention.max_age_days.0
    );
    println!(
        "  web: reads {}; models: default {}, nice {}, {}",
        if config.web.read_requires_token {
            "need the token"
        } else {
            "open on loopback"
        },
        config.models.default.as_deref().unwrap_or("(built-in)"),
        config.models.nice,
        if config.models.shared {
            "one shared copy in the model service"
        } else {
            "a copy in each model component"
        }
    );
    Ok(())
}
