//! The one runtime of every long-running n0m1 binary (boot, managers, metric and protocol
//! daemons): signals turned into a typed event channel, a watcher of other writers' commits
//! (`PRAGMA data_version`), and a watcher of processes that are not our children (pidfds).
//!
//! Everything arrives on one channel as an `Event`, so a binary's loop is a single `match`.
//! Signal handlers only write to signal-hook's self-pipe; the work happens on the loop's
//! thread. The lifecycle writer that goes with it is `crate::writer`.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use rustix::event::{PollFd, PollFlags, poll};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// What wakes a long-running binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// SIGCHLD: one or more children exited; reap them all.
    ChildExited,
    /// SIGTERM or SIGINT: stop cleanly and exit 0.
    Shutdown,
    /// SIGHUP: re-read configuration.
    Reload,
    /// Another connection committed something the watcher was asked to look for.
    DatabaseChanged,
    /// A process watched through `PidWatcher` (not our child) has exited.
    ProcessExited { pid: i32 },
}

/// Which signals a binary handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalSet {
    /// Boot and managers: SIGCHLD, SIGTERM, SIGINT, SIGHUP.
    Supervisor,
    /// Components: SIGTERM and SIGINT.
    Component,
}

/// The event channel of one process, with its signal handlers installed.
pub struct Runtime {
    sender: Sender<Event>,
    receiver: Receiver<Event>,
}

impl Runtime {
    /// Installs the handlers now: call it first thing, so a SIGTERM during start-up waits in
    /// the channel (a clean stop) and no SIGCHLD of an early child is missed.
    pub fn start(signals: SignalSet) -> std::io::Result<Runtime> {
        let (sender, receiver) = mpsc::channel();
        let set: &[i32] = match signals {
            SignalSet::Supervisor => &[SIGCHLD, SIGTERM, SIGINT, SIGHUP],
            SignalSet::Component => &[SIGTERM, SIGINT],
        };
        let mut handle = Signals::new(set)?;
        let signal_sender = sender.clone();
        thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in handle.forever() {
                    let event = match signal {
                        SIGCHLD => Event::ChildExited,
                        SIGHUP => Event::Reload,
                        _ => Event::Shutdown,
                    };
                    if signal_sender.send(event).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Runtime { sender, receiver })
    }

    /// The next event, or `None` once `deadline` passes (`None` waits without end).
    pub fn next(&self, deadline: Option<Instant>) -> Option<Event> {
        match deadline {
            None => self.receiver.recv().ok(),
            Some(deadline) => self
                .receiver
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .ok(),
        }
    }

    /// An event already waiting, if any.
    pub fn try_next(&self) -> Option<Event> {
        self.receiver.try_recv().ok()
    }

    /// Reports `Event::DatabaseChanged` whenever another connection commits.
    pub fn watch_database(&self, db_path: PathBuf, interval: Duration) {
        // data_version itself moves on every commit by another connection.
        self.watch_database_with(db_path, interval, |conn| {
            conn.query_row("PRAGMA data_version", [], |row| row.get::<_, i64>(0))
                .map(|version| version as u64)
        });
    }

    /// Like `watch_database`, but after each commit `fingerprint` is computed on the
    /// watcher's own connection and the change is reported only if it differs from the last
    /// one: a manager asks about its own rows, so the many commits that do not touch them
    /// (metric samples, its own lifecycle rows) never wake its loop.
    pub fn watch_database_with(
        &self,
        db_path: PathBuf,
        interval: Duration,
        fingerprint: impl FnMut(&Connection) -> rusqlite::Result<u64> + Send + 'static,
    ) {
        let sender = self.sender.clone();
        let spawned = thread::Builder::new()
            .name("db-watch".into())
            .spawn(move || watch_loop(db_path, interval, fingerprint, sender));
        if let Err(error) = spawned {
            tracing::error!(
                "cannot start the database watcher ({error}); changes are noticed on the periodic pass only"
            );
        }
    }

    /// A watcher of processes that are not our children, reporting `Event::ProcessExited`.
    pub fn pid_watcher(&self) -> std::io::Result<PidWatcher> {
        PidWatcher::start(self.sender.clone())
    }
}

/// How long the watcher waits before reopening a database it could not open.
const REOPEN_DELAY: Duration = Duration::from_secs(5);

fn watch_loop(
    db_path: PathBuf,
    interval: Duration,
    mut fingerprint: impl FnMut(&Connection) -> rusqlite::Result<u64>,
    sender: Sender<Event>,
) {
    let mut conn: Option<Connection> = None;
    let mut last_version: Option<i64> = None;
    let mut last_print: Option<u64> = None;
    loop {
        let Some(connection) = &conn else {
            match crate::db::open(&db_path) {
                Ok(connection) => conn = Some(connection),
                Err(error) => {
                    // Said once per outage and retried slowly: a missing database is an
                    // operator's problem to fix, not a reason to spin.
                    tracing::warn!(
                        "database watcher cannot open the database: {error}; retrying every 5 s"
                    );
                    thread::sleep(REOPEN_DELAY);
                }
            }
            continue;
        };
        let version = connection.query_row("PRAGMA data_version", [], |row| row.get::<_, i64>(0));
        match version {
            Ok(version) if last_version != Some(version) => {
                let first = last_version.is_none();
                last_version = Some(version);
                match fingerprint(connection) {
                    Ok(print) => {
                        let changed = last_print != Some(print);
                        last_print = Some(print);
                        if !first && changed && sender.send(Event::DatabaseChanged).is_err() {
                            return;
                        }
                    }
                    // Reported as a change: the loop's own read will say what is wrong.
                    Err(_) if !first => {
                        if sender.send(Event::DatabaseChanged).is_err() {
                            return;
                        }
                    }
                    Err(_) => {}
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!("database watcher query failed: {error}; reopening");
                conn = None;
                continue;
            }
        }
        thread::sleep(interval);
    }
}

/// Watches processes that are not our children through pidfds, all on one thread: a pipe
/// wakes its `poll` when a pid is added.
pub struct PidWatcher {
    add: Sender<(i32, OwnedFd)>,
    wake: OwnedFd,
}

impl PidWatcher {
    fn start(events: Sender<Event>) -> std::io::Result<PidWatcher> {
        let (wake_read, wake_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let (add, added) = mpsc::channel::<(i32, OwnedFd)>();
        thread::Builder::new()
            .name("pidfds".into())
            .spawn(move || {
                let mut watched: HashMap<i32, OwnedFd> = HashMap::new();
                loop {
                    let pids: Vec<i32> = watched.keys().copied().collect();
                    let mut fds = Vec::with_capacity(pids.len() + 1);
                    fds.push(PollFd::new(&wake_read, PollFlags::IN));
                    fds.extend(
                        pids.iter()
                            .map(|pid| PollFd::new(&watched[pid], PollFlags::IN)),
                    );
                    match poll(&mut fds, None) {
                        Ok(_) | Err(rustix::io::Errno::INTR) => {}
                        Err(_) => return,
                    }
                    let woken = !fds[0].revents().is_empty();
                    let exited: Vec<i32> = pids
                        .iter()
                        .zip(&fds[1..])
                        .filter(|(_, fd)| !fd.revents().is_empty())
                        .map(|(pid, _)| *pid)
                        .collect();
                    drop(fds);
                    for pid in exited {
                        watched.remove(&pid);
                        if events.send(Event::ProcessExited { pid }).is_err() {
                            return;
                        }
                    }
                    if woken {
                        let mut buffer = [0u8; 64];
                        let _ = rustix::io::read(&wake_read, &mut buffer);
                        loop {
                            match added.try_recv() {
                                Ok((pid, fd)) => {
                                    watched.insert(pid, fd);
                                }
                                Err(mpsc::TryRecvError::Empty) => break,
                                // The watcher was dropped: nothing more will be asked.
                                Err(mpsc::TryRecvError::Disconnected) => return,
                            }
                        }
                    }
                }
            })?;
        Ok(PidWatcher {
            add,
            wake: wake_write,
        })
    }

    /// Reports `Event::ProcessExited { pid }` once `pid` exits (at once if it already has).
    pub fn watch(&self, pid: i32) -> std::io::Result<()> {
        let pid_value = rustix::process::Pid::from_raw(pid).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "pid must be positive")
        })?;
        let pidfd = rustix::process::pidfd_open(pid_value, rustix::process::PidfdFlags::empty())?;
        self.add
            .send((pid, pidfd))
            .map_err(|_| std::io::Error::other("the pidfd watcher thread has stopped"))?;
        rustix::io::write(self.wake.as_fd(), &[1])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_watcher_reports_each_exit_on_one_thread() {
        let runtime = Runtime::start(SignalSet::Component).unwrap();
        let watcher = runtime.pid_watcher().unwrap();
        #[allow(clippy::disallowed_methods)] // a test's own short-lived children
        let mut children: Vec<std::process::Child> = (0..3)
            .map(|i| {
                std::process::Command::new("sleep")
                    .arg(format!("0.{}", i + 1))
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in &children {
            watcher.watch(child.id() as i32).unwrap();
        }
        let mut exited = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while exited.len() < 3 {
            match runtime.next(Some(deadline)) {
                Some(Event::ProcessExited { pid }) => exited.push(pid),
                Some(_) => {}
                None => panic!("only {exited:?} reported"),
            }
        }
        let mut expected: Vec<i32> = children.iter().map(|c| c.id() as i32).collect();
        expected.sort();
        exited.sort();
        assert_eq!(exited, expected);
        for child in &mut children {
            child.wait().unwrap();
        }
    }

    #[test]
    fn database_watcher_reports_only_changed_fingerprints() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("n0m1_agi.db");
        crate::db::initialise(&path).unwrap();
        let runtime = Runtime::start(SignalSet::Component).unwrap();
        runtime.watch_database_with(path.clone(), Duration::from_millis(10), |conn| {
            conn.query_row("SELECT count(*) FROM cpu_usage_log", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64 + 1)
        });
        std::thread::sleep(Duration::from_millis(100));
        let writer = crate::db::open(&path).unwrap();
        // A commit that leaves the fingerprint alone wakes nobody.
        writer
            .execute("INSERT INTO db_access_log (component_id, table_name, access_type) VALUES ('t', 'x', 'READ')", [])
            .unwrap();
        let quiet = runtime.next(Some(Instant::now() + Duration::from_millis(300)));
        assert_eq!(quiet, None);
        writer
            .execute("INSERT INTO cpu_usage_log (cpu_usage) VALUES (1.0)", [])
            .unwrap();
        let woken = runtime.next(Some(Instant::now() + Duration::from_secs(5)));
        assert_eq!(woken, Some(Event::DatabaseChanged));
    }
}
