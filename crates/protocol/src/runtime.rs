//! What every protocol component shares, on top of `n0m1_core::runtime` and the lifecycle
//! writer: its database connection, its lifecycle id, a clean stop on SIGTERM/SIGINT, and
//! waiting for other writers' commits instead of re-reading tables on a timer.

use std::time::{Duration, Instant};

use n0m1_core::access_log::{AccessKind, record_access};
use n0m1_core::db::{self, DatabaseFile, retry_busy};
use n0m1_core::lifecycle::{LifecycleEvent, LifecycleRecord};
use n0m1_core::notify::{self, WatchdogPinger};
use n0m1_core::runtime::{self as core_runtime, Event, SignalSet};
use n0m1_core::writer::Writer;
use rusqlite::Connection;

/// How often the database is checked for other writers' commits.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(100);

pub struct Runtime {
    pub conn: Connection,
    pub component_id: String,
    pub run_type: String,
    events: core_runtime::Runtime,
    writer: Writer,
    stopping: bool,
    /// A commit seen while looking for a stop request, kept for the next `wait`.
    change_pending: bool,
    database: DatabaseFile,
    watchdog: WatchdogPinger,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    Shutdown,
    Changed,
    Timeout,
}

impl Runtime {
    pub fn start(
        db_path: &std::path::Path,
        component_id: &str,
        run_type: &str,
    ) -> anyhow::Result<Runtime> {
        // Handlers first: a SIGTERM during start-up is a clean stop, not death.
        let events = core_runtime::Runtime::start(SignalSet::Component)?;
        let conn = db::open(db_path)?;
        let database = DatabaseFile::capture(db_path)?;
        let writer = Writer::start(db_path)?;
        events.watch_database(database.clone(), WATCH_INTERVAL);
        Ok(Runtime {
            database,
            watchdog: WatchdogPinger::from_env(),
            conn,
            component_id: component_id.to_owned(),
            run_type: run_type.to_owned(),
            events,
            writer,
            stopping: false,
            change_pending: false,
        })
    }

    /// Writes a lifecycle event under this component's id and waits (up to the busy timeout)
    /// until it is in the database, so what others read follows what this component did; a
    /// failure is logged, not fatal.
    pub fn event(&self, event: LifecycleEvent, message: &str) {
        self.writer.event(
            LifecycleRecord::new(self.component_id.as_str(), event)
                .pid(std::process::id() as i32)
                .run_type(self.run_type.as_str())
                .message(message),
        );
        if !self.writer.sync(db::BUSY_TIMEOUT) {
            tracing::warn!("lifecycle event {event} is still queued: the database stays busy");
        }
        // A component records STARTED_SUCCESSFULLY itself once it can do its job (subscribed,
        // model loaded or fallen back): that is also what readiness means to its manager.
        if event == LifecycleEvent::StartedSuccessfully {
            let status: String = message.chars().take(notify::MAX_STATUS_CHARS).collect();
            if let Err(error) = notify::notify(&format!("READY=1\nSTATUS={status}")) {
                tracing::warn!("cannot tell the manager this component is ready: {error}");
            }
        }
    }

    pub fn access(&self, table: &str, kind: AccessKind) {
        if let Err(error) = retry_busy(3, || {
            record_access(&self.conn, &self.component_id, table, kind)
        }) {
            tracing::warn!("cannot record access to {table}: {error}");
        }
    }

    fn note(&mut self, event: Event) {
        match event {
            Event::Shutdown => self.stopping = true,
            Event::DatabaseChanged => self.change_pending = true,
            // Stop rather than read notifications from, and write outputs into, a file that
            // is no longer the system's.
            Event::DatabaseReplaced => {
                if let Err(error) = self.database.check() {
                    tracing::error!("{error}");
                }
                self.stopping = true;
            }
            Event::ChildExited | Event::Reload | Event::ProcessExited { .. } | Event::Readable => {}
        }
    }

    /// Runs `work` now, again after every commit by another writer, and at least every
    /// `period`, until SIGTERM or SIGINT; then records STOPPED.
    pub fn serve(&mut self, period: Duration, mut work: impl FnMut(&Connection)) {
        loop {
            work(&self.conn);
            if self.wait(period) == Wake::Shutdown {
                break;
            }
        }
        self.event(LifecycleEvent::Stopped, "stopped on signal");
    }

    /// Sleeps until another connection commits, a stop is asked for, or `timeout` passes;
    /// pings the watchdog on the way when the manager asked for pings (`WATCHDOG_USEC`).
    pub fn wait(&mut self, timeout: Duration) -> Wake {
        let deadline = Instant::now() + timeout;
        loop {
            self.watchdog.ping_if_due();
            if self.stopping {
                return Wake::Shutdown;
            }
            if std::mem::take(&mut self.change_pending) {
                return Wake::Changed;
            }
            let wake = self
                .watchdog
                .due()
                .map_or(deadline, |due| due.min(deadline));
            match self.events.next(Some(wake)) {
                Some(event) => self.note(event),
                None if Instant::now() >= deadline => return Wake::Timeout,
                None => {}
            }
        }
    }
}

/// The component id: `N0M1_COMPONENT_ID` when a manager started us, else `fallback`.
pub fn component_id_or(fallback: &str) -> String {
    std::env::var(n0m1_core::home::ENV_COMPONENT_ID)
        .ok()
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| fallback.to_owned())
}
