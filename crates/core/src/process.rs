//! Processes: the one door for spawning, and what /proc says about a pid.
//!
//! Every supervised child leads its own process group, so one signal reaches the whole tree it
//! forks. Liveness is read from /proc (state and start time), never from `kill(pid, 0)`: on these
//! machines an exited child that nobody reaped still answers signal 0.

use std::ffi::OsString;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::home::{HomeError, open_private_append};

mod clone3;

/// What /proc/<pid>/stat says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    /// Clock ticks after boot at which the process started; with the pid, a fingerprint.
    pub start_ticks: u64,
    pub rss_pages: i64,
}

impl ProcStat {
    /// Parses the text of /proc/<pid>/stat. The command name may contain spaces and
    /// parentheses, so fields are counted from the last ')'.
    pub fn parse(text: &str) -> Option<ProcStat> {
        let pid = text.split_whitespace().next()?.parse().ok()?;
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // fields[0] is field 3 (state) of proc(5).
        let field = |n: usize| fields.get(n - 3).copied();
        Some(ProcStat {
            pid,
            state: field(3)?.chars().next()?,
            ppid: field(4)?.parse().ok()?,
            pgrp: field(5)?.parse().ok()?,
            utime_ticks: field(14)?.parse().ok()?,
            stime_ticks: field(15)?.parse().ok()?,
            start_ticks: field(22)?.parse().ok()?,
            rss_pages: field(24)?.parse().ok()?,
        })
    }

    pub fn read(pid: i32) -> Option<ProcStat> {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .as_deref()
            .and_then(ProcStat::parse)
    }

    /// Running, sleeping or stopped: anything but a zombie or a dead task.
    pub fn is_alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// True when `pid` exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    ProcStat::read(pid).is_some_and(|stat| stat.is_alive())
}

/// True when `pid` is alive and is the same process that started at `start_ticks`.
pub fn is_same_process(pid: i32, start_ticks: u64) -> bool {
    ProcStat::read(pid).is_some_and(|stat| stat.is_alive() && stat.start_ticks == start_ticks)
}

/// True when `pid`'s environment has `key=value` (/proc/<pid>/environ; readable for our own
/// user's processes).
pub fn environ_has(pid: i32, key: &str, value: &str) -> bool {
    let Ok(environ) = fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let wanted = format!("{key}={value}");
    environ
        .split(|b| *b == 0)
        .any(|entry| entry == wanted.as_bytes())
}

/// Live processes started for the home at `home_root` by n0m1 and their descendants, found
/// by environment: every spawn of boot and the managers sets `N0M1_HOME` together with
/// `N0M1_COMPONENT_ID` (components) or `N0M1_BOOT_PID` (managers), and children inherit them,
/// so this reaches descendants that left their group and were orphaned. A person's shell
/// that merely exports `N0M1_HOME` is not one of them.
pub fn home_processes(home_root: &Path) -> Vec<i32> {
    let home = format!("{}={}", crate::home::ENV_HOME, home_root.display());
    let component = format!("{}=", crate::home::ENV_COMPONENT_ID);
    let manager = format!("{}=", crate::home::ENV_BOOT_PID);
    let me = std::process::id() as i32;
    all_processes()
        .into_iter()
        .filter(|p| p.is_alive() && p.pid != me)
        .filter(|p| {
            let Ok(environ) = fs::read(format!("/proc/{}/environ", p.pid)) else {
                return false;
            };
            let entries: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
            let has = |wanted: &str| entries.contains(&wanted.as_bytes());
            let has_key = |prefix: &str| entries.iter().any(|e| e.starts_with(prefix.as_bytes()));
            has(&home) && (has_key(&component) || has_key(&manager))
        })
        .map(|p| p.pid)
        .collect()
}

/// Every process /proc lists now.
pub fn all_processes() -> Vec<ProcStat> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(ProcStat::read)
        .collect()
}

/// The live descendants of `root` (children, grandchildren, …), from one /proc snapshot.
pub fn descendants(root: i32) -> Vec<ProcStat> {
    descendants_in(&all_processes(), root)
}

/// The live descendants of `root` in a snapshot taken with `all_processes`: callers that look
/// at many trees at once take one snapshot for all of them.
pub fn descendants_in(processes: &[ProcStat], root: i32) -> Vec<ProcStat> {
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for child in processes
            .iter()
            .filter(|p| p.ppid == parent && p.pid != root)
        {
            if !found.iter().any(|f: &ProcStat| f.pid == child.pid) {
                frontier.push(child.pid);
                found.push(*child);
            }
        }
    }
    found.retain(ProcStat::is_alive);
    found
}

/// Sends `signal` to every process of group `pgid`; a group that is gone is not an error.
pub fn signal_group(pgid: i32, signal: Signal) {
    let _ = killpg(Pid::from_raw(pgid), signal);
}

/// True while any process (zombies included) is in group `pgid`: one syscall, where a /proc
/// scan would cost one read per process on the machine.
pub fn group_exists(pgid: i32) -> bool {
    !matches!(
        killpg(Pid::from_raw(pgid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Sends `signal` to one process; a process that is gone is not an error.
pub fn signal_process(pid: i32, signal: Signal) {
    let _ = kill(Pid::from_raw(pid), signal);
}

/// Lowers this process's CPU priority to `nice` (0-19): model work yields to the supervisors
/// and the metric daemons. Threads started later inherit it.
pub fn lower_priority(nice: i32) -> std::io::Result<()> {
    rustix::process::setpriority_process(None, nice.clamp(0, 19)).map_err(std::io::Error::from)
}

/// Resident memory of a process in KiB.
pub fn rss_kib(stat: &ProcStat) -> u64 {
    let page_kib = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64
        / 1024;
    stat.rss_pages.max(0) as u64 * page_kib
}

/// Clock ticks per second, for turning /proc times into seconds.
pub fn clock_ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64
}

/// Seconds since boot, from /proc/uptime.
pub fn uptime_seconds() -> Option<f64> {
    fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What to run and where its output goes.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, OsString)>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub current_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error(transparent)]
    Log(#[from] HomeError),
    #[error("cannot start {program}: {source}")]
    Exec {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A spawned child: its pid and its /proc start time (the fingerprint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spawned {
    pub pid: i32,
    pub start_ticks: u64,
}

/// Starts `spec` as the leader of a new process group, stdin from /dev/null, stdout and stderr
/// appended to its log files (0600). The caller reaps it (managers reap with `waitpid(-1)`,
/// which is why this returns a pid and not a `Child`). The sd_notify variables this process
/// was given are its own (systemd's, for boot): they are not inherited, only set by `spec`.
pub fn spawn(spec: &SpawnSpec) -> Result<Spawned, SpawnError> {
    spawn_placed(spec, Placement::default())
}

/// Where a component runs besides its program and files: its cgroups and its account.
#[derive(Debug, Default)]
pub struct Placement {
    /// The cgroup2 cgroup it is born in (`cgroup::ComponentCgroup::placement`).
    pub birth: Option<BirthCgroup>,
    /// `cgroup.procs` of each other cgroup it joins before exec, open for writing.
    pub cgroup_procs: Vec<std::os::fd::OwnedFd>,
    /// Run as this account instead of the spawner's (root only).
    pub account: Option<Account>,
}

/// A cgroup2 cgroup to start a child in: its directory (for clone3) and its `cgroup.procs`
/// (joined before exec instead, on a kernel without clone3).
#[derive(Debug)]
pub struct BirthCgroup {
    pub dir: std::os::fd::OwnedFd,
    pub procs: std::os::fd::OwnedFd,
}

/// A user to run as, resolved from its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
}

impl Account {
    /// `user` (and `group`, else the user's own group) from the system's account database;
    /// the error names what does not exist.
    pub fn resolve(user: &str, group: Option<&str>) -> Result<Account, String> {
        let found = nix::unistd::User::from_name(user)
            .map_err(|error| format!("cannot look up user {user}: {error}"))?
            .ok_or_else(|| format!("no user named {user} on this machine"))?;
        let gid = match group {
            None => found.gid.as_raw(),
            Some(name) => nix::unistd::Group::from_name(name)
                .map_err(|error| format!("cannot look up group {name}: {error}"))?
                .ok_or_else(|| format!("no group named {name} on this machine"))?
                .gid
                .as_raw(),
        };
        Ok(Account {
            user: user.to_owned(),
            uid: found.uid.as_raw(),
            gid,
        })
    }
}

/// `spawn`, with the child placed first: it joins its cgroups between fork and exec (so it
/// runs in them from its program's first instruction) and takes its account (std's
/// `uid`/`gid`, which also drop the spawner's supplementary groups).
pub fn spawn_placed(spec: &SpawnSpec, placement: Placement) -> Result<Spawned, SpawnError> {
    spawn_placed_with(spec, placement, |_| {})
}

/// `spawn_placed`, calling `on_born` with the child's pid as soon as it exists: with clone3,
/// before its exec completes (the spawner can record the pid meanwhile, as runit does; an
/// exec that then fails is this function's error, and the spawner undoes what it recorded).
pub fn spawn_placed_with(
    spec: &SpawnSpec,
    mut placement: Placement,
    mut on_born: impl FnMut(i32),
) -> Result<Spawned, SpawnError> {
    let stdout = open_private_append(&spec.stdout)?;
    let stderr = open_private_append(&spec.stderr)?;
    if let Some(birth) = placement.birth.take() {
        use std::os::fd::AsFd;
        let born = clone3::spawn_into(
            spec,
            birth.dir.as_fd(),
            &placement.cgroup_procs,
            placement.account.as_ref(),
            &stdout,
            &stderr,
            &mut on_born,
        )
        .map_err(|source| SpawnError::Exec {
            program: spec.program.clone(),
            source,
        })?;
        if let Some(pid) = born {
            let start_ticks = ProcStat::read(pid).map_or(0, |stat| stat.start_ticks);
            return Ok(Spawned { pid, start_ticks });
        }
        // No clone3 here: the child joins this one too, before exec.
        placement.cgroup_procs.insert(0, birth.procs);
    }
    #[allow(clippy::disallowed_methods)] // this is the one door
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .env_remove(crate::notify::ENV_NOTIFY_SOCKET)
        .env_remove(crate::notify::ENV_WATCHDOG_USEC)
        .env_remove(crate::notify::ENV_WATCHDOG_PID)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.current_dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    if let Some(account) = &placement.account {
        use std::os::unix::process::CommandExt;
        command.gid(account.gid).uid(account.uid);
    }
    if !placement.cgroup_procs.is_empty() {
        clone3::join_before_exec(&mut command, placement.cgroup_procs);
    }
    let child = command.spawn().map_err(|source| SpawnError::Exec {
        program: spec.program.clone(),
        source,
    })?;
    let pid = child.id() as i32;
    // Dropping a std Child neither waits nor kills: reaping stays with the caller.
    drop(child);
    on_born(pid);
    let start_ticks = ProcStat::read(pid).map_or(0, |stat| stat.start_ticks);
    Ok(Spawned { pid, start_ticks })
}

/// Runs a helper program in the foreground with this process's stdin, stdout and stderr, and
/// returns its exit code (128 + signal when killed).
pub fn run_foreground(program: &Path, args: &[OsString]) -> Result<i32, SpawnError> {
    #[allow(clippy::disallowed_methods)] // the one door, for a foreground helper
    let status = Command::new(program)
        .args(args)
        .status()
        .map_err(|source| SpawnError::Exec {
            program: program.to_path_buf(),
            source,
        })?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// The folder of the running executable: bundled binaries are looked up beside it.
pub fn own_bin_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()?
        .parent()
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let text = "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 98765 1000 250 18446744073709551615";
        let stat = ProcStat::parse(text).unwrap();
        assert_eq!(
            (stat.pid, stat.state, stat.ppid, stat.pgrp),
            (1234, 'S', 1, 1234)
        );
        assert_eq!(
            (
                stat.utime_ticks,
                stat.stime_ticks,
                stat.start_ticks,
                stat.rss_pages
            ),
            (7, 3, 98765, 250)
        );
        assert!(stat.is_alive());
        let zombie =
            ProcStat::parse("5 (x) Z 1 5 5 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 10 0 0").unwrap();
        assert!(!zombie.is_alive());
        assert!(ProcStat::parse("garbage").is_none());
    }

    #[test]
    fn own_process_is_alive_with_stable_fingerprint() {
        let me = std::process::id() as i32;
        let stat = ProcStat::read(me).unwrap();
        assert!(is_same_process(me, stat.start_ticks));
        assert!(!is_same_process(me, stat.start_ticks + 1));
    }

    #[test]
    fn environment_lookup() {
        let me = std::process::id() as i32;
        let (key, value) = std::env::vars()
            .next()
            .expect("tests run with an environment");
        assert!(environ_has(me, &key, &value));
        assert!(!environ_has(me, &key, "surely-not-this-value-n0m1"));
    }

    #[test]
    fn descendants_follow_the_tree() {
        let p = |pid, ppid| ProcStat {
            pid,
            ppid,
            state: 'S',
            pgrp: pid,
            utime_ticks: 0,
            stime_ticks: 0,
            start_ticks: 0,
            rss_pages: 0,
        };
        let table = [p(10, 1), p(11, 10), p(12, 11), p(13, 1), p(14, 12)];
        let mut pids: Vec<i32> = descendants_in(&table, 10).iter().map(|s| s.pid).collect();
        pids.sort();
        assert_eq!(pids, [11, 12, 14]);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DieWithBootError {
    #[error("cannot set the parent-death signal: {0}")]
    Os(std::io::Error),
    #[error(
        "boot (pid {boot_pid}) is gone before this process could start; not running as an orphan"
    )]
    Orphaned { boot_pid: i32 },
}

/// For a process boot started (`N0M1_BOOT_PID` set): SIGTERM when boot dies, so nothing
/// outlives it; an error if boot is already gone. Nothing to do without the variable.
pub fn die_with_boot() -> Result<(), DieWithBootError> {
    let Some(boot_pid) = std::env::var(crate::home::ENV_BOOT_PID)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return Ok(());
    };
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
        .map_err(|errno| DieWithBootError::Os(errno.into()))?;
    // Boot may have died before the signal was armed.
    if nix::unistd::getppid().as_raw() != boot_pid {
        return Err(DieWithBootError::Orphaned { boot_pid });
    }
    Ok(())
}
