//! Rows a supervisor owes the database, written in one transaction per loop turn.
//!
//! Supervisors never write on the restart path: they queue here and flush after the work is
//! done. A flush that fails because another writer holds the lock keeps every row for the next
//! turn, so a locked database delays the log but loses nothing.

use n0m1_core::db::is_transient;
use n0m1_core::lifecycle::LifecycleRecord;
use n0m1_core::state::{self, ComponentState};
use rusqlite::Connection;

#[derive(Debug)]
enum Pending {
    Event(LifecycleRecord),
    State(ComponentState),
    ClearReset(String),
}

/// How long a supervisor's connection waits for another writer's lock. Short on purpose: the
/// loop must get back to reaping and restarting, and a busy flush keeps its rows for the next
/// turn anyway.
pub const SUPERVISOR_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(100);

/// Bound on queued rows while the database is unwritable, so a long outage cannot exhaust
/// memory; the oldest state rows go first (a later one supersedes them anyway).
const MAX_PENDING: usize = 100_000;

#[derive(Debug, Default)]
pub struct Journal {
    pending: Vec<Pending>,
}

impl Journal {
    pub fn event(&mut self, row: LifecycleRecord) {
        tracing::info!(component = %row.component_id, event = %row.event, pid = ?row.pid, message = ?row.message);
        self.push(Pending::Event(row));
    }

    pub fn state(&mut self, row: ComponentState) {
        self.push(Pending::State(row));
    }

    pub fn clear_reset(&mut self, component_id: &str) {
        self.push(Pending::ClearReset(component_id.to_owned()));
    }

    fn push(&mut self, item: Pending) {
        if self.pending.len() >= MAX_PENDING
            && let Some(index) = self
                .pending
                .iter()
                .position(|p| matches!(p, Pending::State(_)))
        {
            self.pending.remove(index);
        }
        self.pending.push(item);
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Writes everything queued in one transaction. On a busy database or a full disk the rows
    /// stay queued; on any other error they are logged to stderr and dropped, since retrying
    /// cannot help.
    pub fn flush(&mut self, conn: &Connection) {
        if self.pending.is_empty() {
            return;
        }
        let result = (|| -> rusqlite::Result<()> {
            let transaction = conn.unchecked_transaction()?;
            for item in &self.pending {
                match item {
                    Pending::Event(row) => {
                        row.write(&transaction)?;
                    }
                    Pending::State(row) => row.save(&transaction)?,
                    Pending::ClearReset(id) => state::clear_reset(&transaction, id)?,
                }
            }
            transaction.commit()
        })();
        match result {
            Ok(()) => self.pending.clear(),
            Err(error) if is_transient(&error) => {
                tracing::warn!(%error, queued = self.pending.len(), "database busy or disk full; keeping rows for the next turn");
            }
            Err(error) => {
                tracing::error!(%error, dropped = self.pending.len(), "cannot write supervision rows");
                self.pending.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use n0m1_core::lifecycle::LifecycleEvent;

    #[test]
    fn busy_database_keeps_rows_until_free() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("n0m1_agi.db");
        n0m1_core::db::initialise(&path).unwrap();
        let conn = n0m1_core::db::open(&path).unwrap();
        conn.busy_timeout(std::time::Duration::from_millis(10))
            .unwrap();
        let blocker = n0m1_core::db::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();

        let mut journal = Journal::default();
        journal.event(LifecycleRecord::new("x", LifecycleEvent::Crashed).message("exit code 1"));
        journal.flush(&conn);
        assert!(
            !journal.is_empty(),
            "rows are kept while the database is locked"
        );

        blocker.execute_batch("COMMIT").unwrap();
        journal.flush(&conn);
        assert!(journal.is_empty());
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM component_lifecycle_log WHERE component_id = 'x'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1);
    }
}
