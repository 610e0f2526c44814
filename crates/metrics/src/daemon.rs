//! The metric daemon loop shared by `temp_main_daemon`, `cpu_usage_daemon` and
//! `mem_usage_daemon`.
//!
//! Sampling and writing are decoupled by a queue: a sample is taken on schedule whatever the
//! database is doing, queued with its own timestamp, and written when the database lets us.
//! A writer that holds the lock for seconds delays rows; it never loses them.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use n0m1_core::access_log::{AccessKind, record_access};
use n0m1_core::config::Retention;
use n0m1_core::db::{self, DatabaseFile, DbError, is_busy};
use n0m1_core::lifecycle::{LifecycleEvent, LifecycleRecord};
use n0m1_core::metric::Metric;
use n0m1_core::notify::{self, WatchdogPinger};
use n0m1_core::runtime::{Event, Runtime, SignalSet};
use n0m1_core::schema::{COMPONENT_LIFECYCLE_LOG, DB_ACCESS_LOG, SYSTEM_METRICS_LOG};
use n0m1_core::state::unix_now;
use n0m1_core::writer::Writer;
use n0m1_core::{Config, Home};
use rusqlite::Connection;

use crate::sample::{CpuSampler, TemperatureSensor, read_memory_percent};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub home: Home,
    pub kind: Metric,
    /// Lifecycle and access-log id: `N0M1_COMPONENT_ID` when a manager started us.
    pub component_id: String,
    pub interval: Duration,
    pub run_type: String,
    /// Normally /proc and /sys; tests point them at recorded files.
    pub proc_root: PathBuf,
    pub sys_root: PathBuf,
}

/// The first CPU figure needs two readings; this far apart keeps the first row well within a
/// second of start.
const FIRST_CPU_WINDOW: Duration = Duration::from_millis(250);
/// Samples held while the database is unwritable (at 10 s intervals: over a day).
const MAX_QUEUED: usize = 10_000;
/// How long the final flush may wait for a lock at shutdown.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(10);
/// Rows deleted per statement when pruning, so no delete holds the write lock for long.
const PRUNE_BATCH: usize = 1_000;
/// How long a prune waits for another writer's lock before it skips the round.
const PRUNE_PATIENCE: Duration = Duration::from_millis(100);
/// Other daemons' values older than this are not combined into `system_metrics_log`.
const COMBINE_WINDOW_SECS: u32 = 60;

struct Sample {
    unix_time: f64,
    value: f64,
}

struct MetricDaemon {
    options: DaemonOptions,
    conn: Connection,
    writer: Writer,
    retention: Retention,
    queue: VecDeque<Sample>,
    last_access_logged: Option<Instant>,
    /// `READY=1` was sent (after the first row written).
    ready: bool,
}

/// Tells the manager the daemon can do its job (sd_notify).
fn ready(status: &str) {
    if let Err(error) = notify::notify(&format!("READY=1\nSTATUS={status}")) {
        tracing::warn!("cannot tell the manager this daemon is ready: {error}");
    }
}

pub fn run(options: DaemonOptions) -> Result<(), MetricsError> {
    // Handlers first: a SIGTERM during start-up is a clean stop, not death.
    let mut runtime = Runtime::start(SignalSet::Component).map_err(MetricsError::Signals)?;
    let conn = db::open(&options.home.db_path())?;
    let database = DatabaseFile::capture(&options.home.db_path())?;
    let writer = Writer::start(&options.home.db_path())?;
    let retention = Config::load(&options.home.config_path())
        .map(|c| c.retention)
        .unwrap_or_else(|error| {
            tracing::error!(%error, "using the default retention");
            Retention::default()
        });
    let mut daemon = MetricDaemon {
        options,
        conn,
        writer,
        retention,
        queue: VecDeque::new(),
        last_access_logged: None,
        ready: false,
    };
    let pid = std::process::id() as i32;
    daemon.event(
        LifecycleEvent::StartedSuccessfully,
        Some(pid),
        &format!(
            "sampling {} every {} s into {}",
            daemon.options.kind.column(),
            daemon.options.interval.as_secs_f64(),
            daemon.options.kind.table()
        ),
    );

    let kind = daemon.options.kind;
    let mut cpu = CpuSampler::new(&daemon.options.proc_root);
    let sensor = match kind {
        Metric::CpuTemperature => match TemperatureSensor::find(&daemon.options.sys_root) {
            Some(sensor) => Some(sensor),
            None => {
                let message = format!(
                    "no CPU temperature sensor on this machine (looked for {}); writing no rows, idle until stopped",
                    TemperatureSensor::searched(&daemon.options.sys_root)
                );
                daemon.event(LifecycleEvent::NoSensor, Some(pid), &message);
                // It has done its job (saying there is nothing to measure): ready, so what
                // waits for it is not held up forever.
                ready("no sensor; idle");
                // Idle, not exiting: exiting would only make the manager restart us forever.
                let mut watchdog = WatchdogPinger::from_env();
                loop {
                    watchdog.ping_if_due();
                    if runtime.next(watchdog.due()) == Some(Event::Shutdown) {
                        break;
                    }
                }
                daemon.event(LifecycleEvent::Stopped, Some(pid), "stopped on signal");
                return Ok(());
            }
        },
        _ => None,
    };
    let started = Instant::now();
    let mut next_sample = match kind {
        Metric::CpuUsage => {
            let _ = cpu.sample();
            started + FIRST_CPU_WINDOW
        }
        _ => started,
    };
    // The first prune runs soon after start, then every prune interval.
    let mut next_prune = started + Duration::from_secs(5);
    // Pinged from this loop (not a thread): a daemon hung here stops pinging.
    let mut watchdog = WatchdogPinger::from_env();
    loop {
        watchdog.ping_if_due();
        let wake = watchdog.due().map_or(next_sample.min(next_prune), |due| {
            due.min(next_sample).min(next_prune)
        });
        if runtime.next(Some(wake)) == Some(Event::Shutdown) {
            break;
        }
        let now = Instant::now();
        if now >= next_sample {
            let reading = match kind {
                Metric::CpuUsage => cpu.sample(),
                Metric::Memory => read_memory_percent(&daemon.options.proc_root),
                Metric::CpuTemperature => sensor
                    .as_ref()
                    .map_or(Ok(None), |s| s.read_celsius().map(Some)),
            };
            // One stat per sample: a deleted or replaced database file is never written
            // into unseen (SQLite itself would carry on writing into the unlinked file).
            if let Err(error) = database.check() {
                tracing::error!("{error}");
                return Err(error.into());
            }
            match reading {
                Ok(Some(value)) => daemon.enqueue(value),
                Ok(None) => {}
                Err(error) => daemon.event(
                    LifecycleEvent::Error,
                    Some(pid),
                    &format!("cannot read {}: {error}", kind.column()),
                ),
            }
            daemon.flush(daemon.options.interval.min(Duration::from_secs(2)) / 2);
            // Keep to the schedule rather than drifting by the time each round takes.
            next_sample += daemon.options.interval;
            if next_sample < now {
                next_sample = now + daemon.options.interval;
            }
        }
        if now >= next_prune {
            daemon.prune();
            next_prune = now
                + daemon
                    .retention
                    .prune_interval
                    .duration()
                    .max(Duration::from_secs(1));
        }
    }
    // Finish the current write: whatever is queued goes in before we exit.
    daemon.flush(SHUTDOWN_FLUSH);
    if !daemon.queue.is_empty() {
        tracing::error!(
            lost = daemon.queue.len(),
            "database stayed locked; samples not written"
        );
    }
    daemon.event(LifecycleEvent::Stopped, Some(pid), "stopped on signal");
    Ok(())
}

impl MetricDaemon {
    fn event(&self, event: LifecycleEvent, pid: Option<i32>, message: &str) {
        let mut record = LifecycleRecord::new(self.options.component_id.as_str(), event)
            .run_type(self.options.run_type.as_str())
            .message(message);
        record.pid = pid;
        self.writer.event(record);
        // Written before sampling goes on: the event is the daemon's word that it is up.
        if !self.writer.sync(db::BUSY_TIMEOUT) {
            tracing::warn!("lifecycle event {event} is still queued: the database stays busy");
        }
    }

    fn enqueue(&mut self, value: f64) {
        if self.queue.len() >= MAX_QUEUED {
            self.queue.pop_front();
            tracing::error!("sample queue full; dropping the oldest sample");
        }
        self.queue.push_back(Sample {
            unix_time: unix_now(),
            value,
        });
    }

    /// Writes every queued sample in one transaction, waiting at most `patience` for a lock.
    fn flush(&mut self, patience: Duration) {
        if self.queue.is_empty() {
            return;
        }
        let _ = self
            .conn
            .busy_timeout(patience.max(Duration::from_millis(10)));
        let result = self.write_queue();
        let _ = self.conn.busy_timeout(db::BUSY_TIMEOUT);
        match result {
            Ok(()) => {
                self.queue.clear();
                if !self.ready {
                    self.ready = true;
                    ready(&format!("writing {}", self.options.kind.table()));
                }
            }
            Err(error) if is_busy(&error) => {
                tracing::warn!(
                    queued = self.queue.len(),
                    "database busy; samples kept for the next round"
                );
            }
            Err(error) => {
                tracing::error!(%error, queued = self.queue.len(), "cannot write samples; kept for the next round");
            }
        }
    }

    fn write_queue(&mut self) -> rusqlite::Result<()> {
        let kind = self.options.kind;
        let transaction = self.conn.unchecked_transaction()?;
        {
            let mut insert = transaction.prepare_cached(&format!(
                "INSERT INTO {} (timestamp, {}) VALUES (datetime(?1, 'unixepoch'), ?2)",
                kind.table(),
                kind.column()
            ))?;
            for sample in &self.queue {
                insert.execute(rusqlite::params![sample.unix_time as i64, sample.value])?;
            }
            if kind == Metric::CpuUsage {
                // One combined row per round for tools built on the original's table, with
                // whatever recent memory and temperature values the other daemons wrote.
                let mut combined = transaction.prepare_cached(&format!(
                    "INSERT INTO {SYSTEM_METRICS_LOG} (timestamp, {}, {}, {})
                     VALUES (datetime(?1, 'unixepoch'),
                       (SELECT {} FROM {} WHERE timestamp >= datetime(?1 - {COMBINE_WINDOW_SECS}, 'unixepoch') ORDER BY id DESC LIMIT 1),
                       ?2,
                       (SELECT {} FROM {} WHERE timestamp >= datetime(?1 - {COMBINE_WINDOW_SECS}, 'unixepoch') ORDER BY id DESC LIMIT 1))",
                    Metric::CpuTemperature.combined_column(),
                    Metric::CpuUsage.combined_column(),
                    Metric::Memory.combined_column(),
                    Metric::CpuTemperature.column(),
                    Metric::CpuTemperature.table(),
                    Metric::Memory.column(),
                    Metric::Memory.table(),
                ))?;
                for sample in &self.queue {
                    combined.execute(rusqlite::params![sample.unix_time as i64, sample.value])?;
                }
            }
            // The access log says which tables we write: once at start, then hourly, not per
            // sample (that would double the rows written).
        }
        let due = self
            .last_access_logged
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(3600));
        if due {
            record_access(
                &transaction,
                &self.options.component_id,
                kind.table(),
                AccessKind::Write,
            )?;
            if kind == Metric::CpuUsage {
                record_access(
                    &transaction,
                    &self.options.component_id,
                    SYSTEM_METRICS_LOG,
                    AccessKind::Write,
                )?;
            }
        }
        transaction.commit()?;
        if due {
            self.last_access_logged = Some(Instant::now());
        }
        Ok(())
    }

    /// Deletes rows older than the retention age, in id order and small batches. Each daemon
    /// prunes its own table; the CPU daemon also prunes the shared logs.
    fn prune(&self) {
        // Pruning can wait for another day; sampling cannot. A held lock skips this round
        // instead of stalling the loop (and the samples due meanwhile).
        let _ = self.conn.busy_timeout(PRUNE_PATIENCE);
        self.prune_tables();
        let _ = self.conn.busy_timeout(db::BUSY_TIMEOUT);
    }

    fn prune_tables(&self) {
        let kind = self.options.kind;
        let age_secs = (self.retention.max_age_days.0 * 86_400.0) as i64;
        let conn = &self.conn;
        let own = |table: &'static str| {
            (
                table,
                db::prune_older_than(conn, table, "timestamp", age_secs, PRUNE_BATCH),
            )
        };
        let mut results = vec![own(kind.table())];
        if kind == Metric::CpuUsage {
            // The shared logs, by their owners' rules, on the one daemon that always runs.
            results.push(own(SYSTEM_METRICS_LOG));
            results.push((
                COMPONENT_LIFECYCLE_LOG,
                n0m1_core::lifecycle::prune(conn, age_secs, PRUNE_BATCH),
            ));
            results.push((
                DB_ACCESS_LOG,
                n0m1_core::access_log::prune(conn, age_secs, PRUNE_BATCH),
            ));
        }
        for (table, result) in results {
            if let Err(error) = result {
                tracing::warn!(%error, table, "pruning skipped this round");
            }
        }
    }
}
