//! The one runtime of every long-running n0m1 binary (boot, managers, metric and protocol
//! daemons): signals turned into typed events, a watcher of other writers' commits
//! (`PRAGMA data_version`), and a watcher of processes that are not our children (pidfds).
//!
//! Everything arrives as an `Event` from `Runtime::next`, so a binary's loop is a single
//! `match`. Each signal's handler (signal-hook's) only writes a byte to a self-pipe, and the
//! loop's own thread polls those pipes: a SIGCHLD wakes the thread that restarts, with no
//! thread in between. Signals are not blocked, so children start with a clean mask. Helper
//! threads (the watchers) queue their events and wake the loop through another pipe. The
//! lifecycle writer that goes with it is `crate::writer`.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use rustix::event::{PollFd, PollFlags, poll};
use rustix::pipe::PipeFlags;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};

use crate::db::DatabaseFile;

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
    /// The watched database's path no longer names the file the watcher opened (deleted or
    /// replaced): `DatabaseFile::check` says how. Reported once; the watcher then stops.
    DatabaseReplaced,
    /// A process watched through `PidWatcher` (not our child) has exited.
    ProcessExited { pid: i32 },
    /// A descriptor given to `watch_readable` has data (a notification datagram).
    Readable,
}

/// Which signals a binary handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalSet {
    /// Boot and managers: SIGCHLD, SIGTERM, SIGINT, SIGHUP.
    Supervisor,
    /// Components: SIGTERM and SIGINT.
    Component,
}

/// What helper threads share with the loop: their queued events and the pipe that wakes it.
struct Shared {
    queue: Mutex<VecDeque<Event>>,
    wake: OwnedFd,
}

/// A helper thread's handle for queuing events; fails once the runtime is gone.
#[derive(Clone)]
struct Notifier(Weak<Shared>);

impl Notifier {
    fn send(&self, event: Event) -> Result<(), ()> {
        let shared = self.0.upgrade().ok_or(())?;
        shared
            .queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push_back(event);
        // A full pipe already means "wake up"; nothing is lost, the queue holds the event.
        let _ = rustix::io::write(&shared.wake, &[1]);
        Ok(())
    }
}

/// The events of one process: its signals' self-pipes and the helpers' queue.
pub struct Runtime {
    /// The read end of each signal's self-pipe, with the event it stands for.
    signals: Vec<(OwnedFd, Event)>,
    wake: OwnedFd,
    shared: Arc<Shared>,
    ready: VecDeque<Event>,
    /// Descriptors polled with the rest; readable ones report `Event::Readable`.
    readable: Vec<OwnedFd>,
}

impl Runtime {
    /// Installs the handlers now: call it first thing, so a SIGTERM during start-up waits
    /// as an event (a clean stop) and no SIGCHLD of an early child is missed.
    pub fn start(signals: SignalSet) -> std::io::Result<Runtime> {
        let wanted: &[(&[i32], Event)] = match signals {
            SignalSet::Supervisor => &[
                (&[SIGCHLD], Event::ChildExited),
                (&[SIGTERM, SIGINT], Event::Shutdown),
                (&[SIGHUP], Event::Reload),
            ],
            SignalSet::Component => &[(&[SIGTERM, SIGINT], Event::Shutdown)],
        };
        let mut pipes = Vec::new();
        for (numbers, event) in wanted {
            let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
            for number in *numbers {
                signal_hook::low_level::pipe::register(*number, write.try_clone()?)?;
            }
            pipes.push((read, *event));
        }
        let (wake, wake_write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        Ok(Runtime {
            signals: pipes,
            wake,
            shared: Arc::new(Shared {
                queue: Mutex::new(VecDeque::new()),
                wake: wake_write,
            }),
            ready: VecDeque::new(),
            readable: Vec::new(),
        })
    }

    /// Polls `fd` with the signals: `Event::Readable` while it has data (the loop reads it
    /// until it would block).
    pub fn watch_readable(&mut self, fd: OwnedFd) {
        self.readable.push(fd);
    }

    fn notifier(&self) -> Notifier {
        Notifier(Arc::downgrade(&self.shared))
    }

    /// Whether a SIGCHLD is waiting (then it is taken: the caller reaps now). A supervisor
    /// asks before periodic work, so a restart never waits behind a pass over the database.
    pub fn take_child_exited(&mut self) -> bool {
        let Some((pipe, _)) = self
            .signals
            .iter()
            .find(|(_, event)| *event == Event::ChildExited)
        else {
            return false;
        };
        let mut drain = [0u8; 64];
        let mut seen = false;
        while matches!(rustix::io::read(pipe, &mut drain), Ok(n) if n > 0) {
            seen = true;
        }
        let queued = self.ready.contains(&Event::ChildExited);
        self.ready.retain(|event| *event != Event::ChildExited);
        seen || queued
    }

    /// Moves pending signals to the front of `ready`, SIGCHLD first (the signal sets list it
    /// first; pushed to the front in reverse, it stays first).
    fn collect_signals(&mut self) {
        let mut drain = [0u8; 64];
        for (pipe, event) in self.signals.iter().rev() {
            let mut seen = false;
            while matches!(rustix::io::read(pipe, &mut drain), Ok(n) if n > 0) {
                seen = true;
            }
            // Signals coalesce anyway: one reap collects every exit, one stop is enough.
            if seen {
                self.ready.retain(|queued| queued != event);
                self.ready.push_front(*event);
            }
        }
    }

    /// Moves every pending signal and queued event into `ready`, without blocking. Signals
    /// go before everything already queued, a child's exit first: a SIGCHLD never waits
    /// behind a database change or a datagram.
    fn collect(&mut self) {
        self.collect_signals();
        let mut drain = [0u8; 64];
        while matches!(rustix::io::read(&self.wake, &mut drain), Ok(n) if n > 0) {}
        if !self.readable.is_empty() && !self.ready.contains(&Event::Readable) {
            let mut fds: Vec<PollFd<'_>> = self
                .readable
                .iter()
                .map(|fd| PollFd::new(fd, PollFlags::IN))
                .collect();
            let zero = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            if matches!(poll(&mut fds, Some(&zero)), Ok(n) if n > 0) {
                self.ready.push_back(Event::Readable);
            }
        }
        let mut queue = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.ready.extend(queue.drain(..));
    }

    /// The next event, or `None` once `deadline` passes (`None` waits without end).
    pub fn next(&mut self, deadline: Option<Instant>) -> Option<Event> {
        loop {
            self.collect_signals();
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            self.collect();
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            let timeout = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    Some(rustix::event::Timespec::try_from(left).unwrap_or(
                        rustix::event::Timespec {
                            tv_sec: i64::MAX,
                            tv_nsec: 0,
                        },
                    ))
                }
                None => None,
            };
            let mut fds: Vec<PollFd<'_>> = self
                .signals
                .iter()
                .map(|(pipe, _)| PollFd::new(pipe, PollFlags::IN))
                .collect();
            fds.push(PollFd::new(&self.wake, PollFlags::IN));
            fds.extend(
                self.readable
                    .iter()
                    .map(|fd| PollFd::new(fd, PollFlags::IN)),
            );
            match poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(error) => {
                    tracing::error!("cannot wait for events: {error}");
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// An event already waiting, if any.
    pub fn try_next(&mut self) -> Option<Event> {
        if self.ready.is_empty() {
            self.collect();
        }
        self.ready.pop_front()
    }

    /// Reports `Event::DatabaseChanged` whenever another connection commits, and
    /// `Event::DatabaseReplaced` once the file is deleted or replaced.
    pub fn watch_database(&self, database: DatabaseFile, interval: Duration) {
        // data_version itself moves on every commit by another connection.
        self.watch_database_with(database, interval, |conn| {
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
        database: DatabaseFile,
        interval: Duration,
        fingerprint: impl FnMut(&Connection) -> rusqlite::Result<u64> + Send + 'static,
    ) {
        let notifier = self.notifier();
        let spawned = thread::Builder::new()
            .name("db-watch".into())
            .spawn(move || watch_loop(database, interval, fingerprint, notifier));
        if let Err(error) = spawned {
            tracing::error!(
                "cannot start the database watcher ({error}); changes are noticed on the periodic pass only"
            );
        }
    }

    /// A watcher of processes that are not our children, reporting `Event::ProcessExited`.
    pub fn pid_watcher(&self) -> std::io::Result<PidWatcher> {
        PidWatcher::start(self.notifier())
    }
}

/// How long the watcher waits before reopening a database it could not open.
const REOPEN_DELAY: Duration = Duration::from_secs(5);

fn watch_loop(
    database: DatabaseFile,
    interval: Duration,
    mut fingerprint: impl FnMut(&Connection) -> rusqlite::Result<u64>,
    sender: Notifier,
) {
    let mut conn: Option<Connection> = None;
    let mut last_version: Option<i64> = None;
    let mut last_print: Option<u64> = None;
    loop {
        // One stat per poll: SQLite itself never notices that its file was unlinked.
        if database.change().is_some() {
            let _ = sender.send(Event::DatabaseReplaced);
            return;
        }
        let Some(connection) = &conn else {
            match crate::db::open(database.path()) {
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
    add: mpsc::Sender<(i32, OwnedFd)>,
    wake: OwnedFd,
}

impl PidWatcher {
    fn start(events: Notifier) -> std::io::Result<PidWatcher> {
        let (wake_read, wake_write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
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
    fn a_child_exit_goes_before_events_already_queued() {
        use nix::sys::pthread::{pthread_kill, pthread_self};
        use nix::sys::signal::Signal;
        let mut runtime = Runtime::start(SignalSet::Supervisor).unwrap();
        let notifier = runtime.notifier();
        notifier.send(Event::DatabaseChanged).unwrap();
        notifier.send(Event::Readable).unwrap();
        // A helper's event is collected first, then the signal arrives.
        runtime.collect();
        pthread_kill(pthread_self(), Signal::SIGCHLD).unwrap();
        let deadline = Some(Instant::now() + Duration::from_secs(5));
        assert_eq!(runtime.next(deadline), Some(Event::ChildExited));
        let rest: Vec<Event> = std::iter::from_fn(|| runtime.try_next())
            // Other tests here raise process-wide signals (SIGHUP, SIGCHLD) at any time.
            .filter(|event| matches!(event, Event::DatabaseChanged | Event::Readable))
            .collect();
        assert_eq!(rest, [Event::DatabaseChanged, Event::Readable]);

        // Asked before periodic work: taken once, then gone from the queue.
        notifier.send(Event::DatabaseChanged).unwrap();
        runtime.collect();
        pthread_kill(pthread_self(), Signal::SIGCHLD).unwrap();
        assert!(runtime.take_child_exited());
        let rest: Vec<Event> = std::iter::from_fn(|| runtime.try_next())
            // Other tests here raise process-wide signals (SIGHUP, SIGCHLD) at any time.
            .filter(|event| matches!(event, Event::DatabaseChanged | Event::Readable))
            .collect();
        assert_eq!(rest, [Event::DatabaseChanged]);
    }

    #[test]
    fn a_signal_is_an_event_and_deadlines_are_kept() {
        use nix::sys::pthread::{pthread_kill, pthread_self};
        use nix::sys::signal::Signal;
        let mut runtime = Runtime::start(SignalSet::Supervisor).unwrap();
        // Handlers are process-wide and other tests here spawn children (SIGCHLD) or use
        // SIGTERM-handling runtimes of their own, so only SIGHUP is sent, and SIGCHLD skipped.
        pthread_kill(pthread_self(), Signal::SIGHUP).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut event = runtime.next(Some(deadline));
        while event == Some(Event::ChildExited) {
            event = runtime.next(Some(deadline));
        }
        assert_eq!(event, Some(Event::Reload));
        while runtime.try_next() == Some(Event::ChildExited) {}
        let started = Instant::now();
        let waited = runtime.next(Some(started + Duration::from_millis(50)));
        assert!(
            matches!(waited, None | Some(Event::ChildExited)),
            "{waited:?}"
        );
        if waited.is_none() {
            assert!(
                started.elapsed() >= Duration::from_millis(50),
                "waits out the deadline"
            );
        }
    }

    #[test]
    fn pid_watcher_reports_each_exit_on_one_thread() {
        let mut runtime = Runtime::start(SignalSet::Component).unwrap();
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
        let mut runtime = Runtime::start(SignalSet::Component).unwrap();
        let database = DatabaseFile::capture(&path).unwrap();
        runtime.watch_database_with(database, Duration::from_millis(10), |conn| {
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
        // Deleting the file is reported, once.
        crate::db::remove(&path).unwrap();
        let woken = runtime.next(Some(Instant::now() + Duration::from_secs(5)));
        assert_eq!(woken, Some(Event::DatabaseReplaced));
    }
}
