//! The lifecycle writer: one thread with its own connection that writes what a process owes
//! the database (lifecycle events, `component_state` rows, acknowledged reset requests).
//!
//! Callers only send on a channel, so no loop ever waits for a flush, a `busy_timeout` or
//! another process's write lock: a supervisor answers the next SIGCHLD while the writer
//! waits. Rows are written in one transaction per batch; on a busy database or a full disk
//! they stay queued and are tried again, so a lock delays the log but loses nothing.

use std::collections::HashSet;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::db::{self, DbError, is_transient};
use crate::lifecycle::LifecycleRecord;
use crate::resources::{self, ResourceSample};
use crate::state::{self, ComponentState, Request};

/// What the writer can be asked to write.
#[derive(Debug)]
enum Row {
    Event(LifecycleRecord),
    State(ComponentState),
    ClearRequest(String, Request),
    Resources(Vec<ResourceSample>),
    PruneResources {
        manager: String,
        before: f64,
    },
    /// Answered once everything sent before it is written.
    Barrier(Sender<()>),
}

/// How long the writer's connection waits for another writer's lock per attempt.
const WRITER_BUSY_TIMEOUT: Duration = Duration::from_millis(250);
/// Pause between attempts while the database stays busy.
const RETRY_DELAY: Duration = Duration::from_millis(50);
/// Bound on queued rows while the database is unwritable, so a long outage cannot exhaust
/// memory; the oldest state rows go first (a later one supersedes them anyway).
const MAX_PENDING: usize = 100_000;
/// Resource samples deleted per prune request.
const PRUNE_BATCH: u32 = 5_000;

/// The sending half; cheap to use from the loop's thread.
pub struct Writer {
    sender: Option<Sender<Row>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Opens the writer's own connection to `db_path` and starts its thread.
    pub fn start(db_path: &Path) -> Result<Writer, DbError> {
        let conn = db::open(db_path)?;
        conn.busy_timeout(WRITER_BUSY_TIMEOUT)
            .map_err(|source| DbError::Sqlite {
                path: db_path.to_path_buf(),
                source,
            })?;
        let (sender, receiver) = mpsc::channel();
        // At exit the last rows may wait this long for another writer's lock.
        let patience = db::BUSY_TIMEOUT;
        let thread = thread::Builder::new()
            .name("db-writer".into())
            .spawn(move || write_loop(conn, receiver, patience))
            .map_err(|source| DbError::Io {
                path: db_path.to_path_buf(),
                action: "start the writer thread for",
                source,
            })?;
        Ok(Writer {
            sender: Some(sender),
            thread: Some(thread),
        })
    }

    fn send(&self, row: Row) {
        if let Some(sender) = &self.sender {
            let _ = sender.send(row);
        }
    }

    /// Queues a lifecycle event (and logs it, in plain words), stamped with the time it is
    /// queued: the time of its event, however late the database lets it be written.
    pub fn event(&self, mut record: LifecycleRecord) {
        if record.at.is_none() {
            record.at = Some(crate::state::unix_now() as i64);
        }
        tracing::info!(
            "{} {}{}: {}",
            record.component_id,
            record.event,
            record.pid.map(|p| format!(" pid {p}")).unwrap_or_default(),
            record.message.as_deref().unwrap_or("")
        );
        self.send(Row::Event(record));
    }

    /// Queues a `component_state` row; only the newest row of a component is written.
    pub fn state(&self, row: ComponentState) {
        self.send(Row::State(row));
    }

    /// Queues the acknowledgement of an operator's request.
    pub fn clear_request(&self, component_id: &str, request: Request) {
        self.send(Row::ClearRequest(component_id.to_owned(), request));
    }

    /// Queues resource samples (`component_resource_log`).
    pub fn resources(&self, samples: Vec<ResourceSample>) {
        if !samples.is_empty() {
            self.send(Row::Resources(samples));
        }
    }

    /// Queues the pruning of one manager's resource samples older than `before` (Unix time).
    pub fn prune_resources(&self, manager: &str, before: f64) {
        self.send(Row::PruneResources {
            manager: manager.to_owned(),
            before,
        });
    }

    /// Waits until everything queued so far is written, at most `timeout`; false on timeout.
    /// For components whose events must be in the database before they go on (a test or an
    /// operator reads them as a sign of progress); supervisors never call it on their loop.
    pub fn sync(&self, timeout: Duration) -> bool {
        let (ack, done) = mpsc::channel();
        self.send(Row::Barrier(ack));
        done.recv_timeout(timeout).is_ok()
    }

    /// Writes what is left (waiting up to the busy timeout for a lock) and stops the thread.
    pub fn close(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        self.sender = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shut();
    }
}

fn write_loop(conn: Connection, receiver: Receiver<Row>, patience: Duration) {
    let mut pending: Vec<Row> = Vec::new();
    loop {
        let next = if pending.is_empty() {
            receiver.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            receiver.recv_timeout(RETRY_DELAY)
        };
        match next {
            Ok(row) => push(&mut pending, row),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        while let Ok(row) = receiver.try_recv() {
            push(&mut pending, row);
        }
        flush(&conn, &mut pending);
    }
    // Closed: the process is exiting. Wait for a lock up to `patience`, then give up loudly.
    let deadline = Instant::now() + patience;
    while !pending.is_empty() && Instant::now() < deadline {
        flush(&conn, &mut pending);
        if !pending.is_empty() {
            thread::sleep(RETRY_DELAY);
        }
    }
    if !pending.is_empty() {
        tracing::error!(
            "{} rows could not be written before exit (database busy or disk full)",
            pending.len()
        );
    }
}

fn push(pending: &mut Vec<Row>, row: Row) {
    if pending.len() >= MAX_PENDING
        && let Some(index) = pending.iter().position(|p| matches!(p, Row::State(_)))
    {
        pending.remove(index);
    }
    pending.push(row);
}

/// Writes everything queued in one transaction. On a busy database or a full disk the rows
/// stay queued; on any other error they are logged and dropped, since retrying cannot help.
fn flush(conn: &Connection, pending: &mut Vec<Row>) {
    if pending.is_empty() {
        return;
    }
    // Only the newest state row of each component matters.
    let mut newest_state = HashSet::new();
    let superseded: Vec<bool> = pending
        .iter()
        .rev()
        .map(|row| match row {
            Row::State(state) => !newest_state.insert(state.component_id.as_str()),
            _ => false,
        })
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let result = (|| -> rusqlite::Result<()> {
        let transaction = conn.unchecked_transaction()?;
        for (row, skip) in pending.iter().zip(&superseded) {
            match row {
                Row::Event(record) => {
                    record.write(&transaction)?;
                }
                Row::State(state) if !skip => state.save(&transaction)?,
                Row::State(_) | Row::Barrier(_) => {}
                Row::ClearRequest(id, request) => state::clear_request(&transaction, id, *request)?,
                Row::Resources(samples) => {
                    for sample in samples {
                        sample.write(&transaction)?;
                    }
                }
                Row::PruneResources { manager, before } => {
                    // Batches keep each transaction short; the next prune takes the rest.
                    resources::prune(&transaction, manager, *before, PRUNE_BATCH)?;
                }
            }
        }
        transaction.commit()
    })();
    match result {
        Ok(()) => {}
        Err(error) if is_transient(&error) => {
            tracing::debug!(
                "database busy or disk full ({error}); keeping {} rows for the next attempt",
                pending.len()
            );
            return;
        }
        Err(error) => {
            tracing::error!("cannot write {} rows: {error}; dropped", pending.len());
        }
    }
    for row in pending.drain(..) {
        if let Row::Barrier(ack) = row {
            let _ = ack.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::LifecycleEvent;
    use crate::state::RunState;

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_locked_database_delays_rows_and_loses_none() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("n0m1_agi.db");
        db::initialise(&path).unwrap();
        let writer = Writer::start(&path).unwrap();
        let blocker = db::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();

        let sent = Instant::now();
        for i in 0..100 {
            writer
                .event(LifecycleRecord::new("x", LifecycleEvent::Crashed).message(format!("{i}")));
        }
        assert!(
            sent.elapsed() < Duration::from_millis(200),
            "sending never waits for the lock"
        );
        assert!(!writer.sync(Duration::from_millis(600)), "still locked");
        blocker.execute_batch("COMMIT").unwrap();
        assert!(writer.sync(Duration::from_secs(10)));
        assert_eq!(
            count(
                &blocker,
                "SELECT count(*) FROM component_lifecycle_log WHERE component_id = 'x'"
            ),
            100
        );
    }

    #[test]
    fn only_the_newest_state_of_a_component_is_kept_and_close_flushes() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("n0m1_agi.db");
        db::initialise(&path).unwrap();
        let writer = Writer::start(&path).unwrap();
        let state = |run: RunState, restarts| ComponentState {
            component_id: "x".into(),
            manager: "daemon_manager".into(),
            state: run,
            pid: None,
            pid_start_ticks: None,
            started_at: None,
            restarts,
            last_exit: None,
            request: None,
            ready: false,
            status_text: None,
        };
        writer.state(state(RunState::Running, 1));
        writer.state(state(RunState::Stopping, 2));
        writer.state(state(RunState::Stopped, 3));
        writer.close();
        let conn = db::open(&path).unwrap();
        let saved = state::load(&conn, "x").unwrap().unwrap();
        assert_eq!((saved.state, saved.restarts), (RunState::Stopped, 3));
    }
}
