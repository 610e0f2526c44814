//! What every protocol component shares: its database connection, its lifecycle id, a clean
//! stop on SIGTERM/SIGINT, and waiting for other writers' commits (`PRAGMA data_version`)
//! instead of re-reading tables on a timer.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use n0m1_core::access_log::{AccessKind, record_access};
use n0m1_core::db::{self, retry_busy};
use n0m1_core::lifecycle::{LifecycleEvent, LifecycleRecord};
use rusqlite::Connection;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// How often the database is checked for other writers' commits.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(100);

pub struct Runtime {
    pub conn: Connection,
    pub component_id: String,
    pub run_type: String,
    shutdown: Receiver<()>,
    data_version: i64,
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
        let conn = db::open(db_path)?;
        let (sender, shutdown) = mpsc::channel();
        let mut signals = Signals::new([SIGTERM, SIGINT])?;
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if signals.forever().next().is_some() {
                    let _ = sender.send(());
                }
            })?;
        let data_version = conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        Ok(Runtime {
            conn,
            component_id: component_id.to_owned(),
            run_type: run_type.to_owned(),
            shutdown,
            data_version,
        })
    }

    /// Writes a lifecycle event under this component's id; a failure is logged, not fatal.
    pub fn event(&self, event: LifecycleEvent, message: &str) {
        tracing::info!(event = %event, message);
        let record = LifecycleRecord::new(self.component_id.as_str(), event)
            .pid(std::process::id() as i32)
            .run_type(self.run_type.as_str())
            .message(message);
        if let Err(error) = retry_busy(3, || record.write(&self.conn)) {
            tracing::error!(%error, "cannot write lifecycle event {event}");
        }
    }

    pub fn access(&self, table: &str, kind: AccessKind) {
        if let Err(error) = retry_busy(3, || {
            record_access(&self.conn, &self.component_id, table, kind)
        }) {
            tracing::warn!(%error, table, "cannot record access");
        }
    }

    /// True once SIGTERM or SIGINT arrived.
    pub fn stop_requested(&self) -> bool {
        !matches!(self.shutdown.try_recv(), Err(mpsc::TryRecvError::Empty))
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

    /// Sleeps until another connection commits, a stop is asked for, or `timeout` passes.
    pub fn wait(&mut self, timeout: Duration) -> Wake {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Wake::Timeout;
            }
            match self
                .shutdown
                .recv_timeout(WATCH_INTERVAL.min(deadline - now))
            {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return Wake::Shutdown,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if let Ok(version) = self
                .conn
                .query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
                && version != self.data_version
            {
                self.data_version = version;
                return Wake::Changed;
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
