//! What wakes a supervisor: signals and database changes, turned into one closed enum on one
//! channel, so the supervisor's loop is a single `match`. Signal handlers only write to
//! signal-hook's self-pipe; all work happens on the loop's thread.

use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::thread;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, poll};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// SIGCHLD: one or more children exited; reap them all.
    ChildExited,
    /// SIGTERM or SIGINT: stop everything and exit 0.
    Shutdown,
    /// SIGHUP: re-read configuration.
    Reload,
    /// Another connection committed to the database (`PRAGMA data_version` moved).
    DatabaseChanged,
    /// A process this supervisor watches but did not start (adopted) has exited.
    AdoptedExited { pid: i32 },
}

/// Starts the signal thread. Must be called before the first child is spawned, so that no
/// SIGCHLD is missed.
pub fn watch_signals(sender: Sender<Event>) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGCHLD, SIGTERM, SIGINT, SIGHUP])?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let event = match signal {
                    SIGCHLD => Event::ChildExited,
                    SIGHUP => Event::Reload,
                    _ => Event::Shutdown,
                };
                if sender.send(event).is_err() {
                    break;
                }
            }
        })?;
    Ok(())
}

const REOPEN_DELAY: Duration = Duration::from_secs(5);

/// Starts a thread that polls `PRAGMA data_version` on its own connection every `interval`
/// and reports changes: a cheap way to notice edits by n0m1ctl, the command daemon or the
/// `sqlite3` shell within a fraction of a second, without re-reading tables on a timer.
pub fn watch_database(db_path: PathBuf, interval: Duration, sender: Sender<Event>) {
    let spawned = thread::Builder::new().name("db-watch".into()).spawn(move || {
        let mut last: Option<i64> = None;
        let mut conn = None;
        loop {
            if conn.is_none() {
                match n0m1_core::db::open(&db_path) {
                    Ok(connection) => conn = Some(connection),
                    Err(error) => {
                        // Said once per outage, and retried slowly: a missing database is an
                        // operator's problem to fix, not a reason to spin.
                        tracing::warn!(%error, "database watcher cannot open the database; retrying every 5 s");
                        thread::sleep(REOPEN_DELAY);
                        continue;
                    }
                }
            }
            if let Some(connection) = &conn {
                match connection.query_row("PRAGMA data_version", [], |row| row.get::<_, i64>(0)) {
                    Ok(version) => {
                        if last.is_some_and(|l| l != version) && sender.send(Event::DatabaseChanged).is_err() {
                            return;
                        }
                        last = Some(version);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "database watcher query failed; reopening");
                        conn = None;
                    }
                }
            }
            thread::sleep(interval);
        }
    });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the database watcher; changes are noticed on the periodic pass only");
    }
}

/// Watches a process that is not our child through a pidfd, and reports when it exits.
pub fn watch_pid(pid: i32, sender: Sender<Event>) -> std::io::Result<()> {
    let pid_value = rustix::process::Pid::from_raw(pid).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "pid must be positive")
    })?;
    let pidfd = rustix::process::pidfd_open(pid_value, rustix::process::PidfdFlags::empty())?;
    thread::Builder::new()
        .name(format!("pidfd-{pid}"))
        .spawn(move || {
            let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
            loop {
                match poll(&mut fds, None) {
                    Ok(_) => break,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(_) => break,
                }
            }
            let _ = sender.send(Event::AdoptedExited { pid });
        })?;
    Ok(())
}
