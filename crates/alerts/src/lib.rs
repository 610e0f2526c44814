//! The alerter (`n0m1_alerts`, a bundled component): reads the lifecycle log after its
//! cursor, matches each event against `alert_rules` (`tracker`), and delivers alerts to exec
//! hooks and webhooks on threads of their own, so a dead or slow target delays nothing; each
//! attempt and its outcome is a row in `alert_log`. It never runs in a supervisor, so no alert
//! is ever sent from a restart path.

pub mod evidence;
pub mod incidents;
// The table and its validation live in core (n0m1ctl apply checks rules too).
pub use n0m1_core::alert_rules as rules;
pub mod tracker;

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use n0m1_core::home::{ENV_HOME, Home};
use n0m1_core::lifecycle::{self, LifecycleEvent, LifecycleRecord};
use n0m1_core::process::{self, SpawnSpec};
use n0m1_core::runtime::{Event, Runtime, SignalSet};
use n0m1_core::schema::{ALERT_CURSOR, ALERT_LOG, MAIN_LLM_ID};
use n0m1_core::{db, notify};
use rusqlite::{Connection, OptionalExtension, params};

use incidents::{IncidentRules, Opening};
use n0m1_core::incidents::IncidentKind;
use rules::{Action, Rule};
use tracker::{Alert, Decision, Seen, Tracker};

/// An exec hook is killed after this long.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// A webhook gives up after this long.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the loop looks for delivery results and new events at the least.
const POLL: Duration = Duration::from_millis(200);
/// Deliveries run on this many threads at most (each waits for its hook or webhook, up to
/// its timeout); a burst beyond them waits in a queue of `QUEUE` deliveries, and what finds
/// the queue full is dropped and recorded in `alert_log` as `dropped`.
pub const WORKERS: usize = 4;
pub const QUEUE: usize = 64;

/// What became of one delivery.
struct Outcome {
    alert: Alert,
    ok: bool,
    detail: String,
}

pub fn run(home: Home, component_id: String) -> anyhow::Result<()> {
    let mut runtime = Runtime::start(SignalSet::Component)?;
    let db_path = home.db_path();
    let conn = db::open(&db_path)?;
    runtime.watch_database(
        db::DatabaseFile::capture(&db_path)?,
        Duration::from_millis(100),
    );
    let mut cursor = load_cursor(&conn)?;
    let (done_tx, done_rx) = mpsc::channel::<Outcome>();
    let mut tracker = Tracker::default();
    let mut reported: HashMap<i64, String> = HashMap::new();
    let mut rules = load_rules(&conn, &home, &component_id, &mut reported);
    let mut incident_rules = IncidentRules::default();
    for open in n0m1_core::incidents::open_ones(&conn)? {
        if let Some(kind) = IncidentKind::parse(&open.kind) {
            incident_rules.opened(&open.component_id, open.id, kind);
        }
    }
    let mut recoveries_checked = Instant::now();
    let mut hook_pipes = n0m1_core::logpipe::LogPipes::default();
    let deliveries = DeliveryPool::start(&home, done_tx.clone());
    let event = |event, message: &str| {
        if let Err(error) = LifecycleRecord::new(component_id.as_str(), event)
            .pid(std::process::id() as i32)
            .message(message)
            .write(&conn)
        {
            tracing::warn!("cannot record {event}: {error}");
        }
    };
    event(
        LifecycleEvent::StartedSuccessfully,
        &format!(
            "watching the lifecycle log after row {cursor} with {} rules",
            rules.len()
        ),
    );
    let _ = notify::notify("READY=1\nSTATUS=watching the lifecycle log");
    let mut watchdog = notify::WatchdogPinger::from_env();
    loop {
        watchdog.ping_if_due();
        let now = Instant::now();
        let wake = [
            Some(now + POLL),
            tracker.next_deadline(&rules),
            watchdog.due(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + POLL);
        match runtime.next(Some(wake)) {
            Some(Event::Shutdown) => break,
            Some(Event::DatabaseReplaced) => {
                tracing::error!("the database was deleted or replaced; stopping");
                break;
            }
            Some(Event::DatabaseChanged) => {
                rules = load_rules(&conn, &home, &component_id, &mut reported)
            }
            _ => {}
        }
        while let Ok(outcome) = done_rx.try_recv() {
            log_outcome(&conn, &outcome);
        }
        let events = match lifecycle::after(&conn, cursor, 500) {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!("cannot read the lifecycle log: {error}; trying again");
                continue;
            }
        };
        let now = Instant::now();
        let mut decisions = Vec::new();
        for logged in &events {
            cursor = logged.id;
            // Our own errors are not alerts about us (that way lies a loop).
            if logged.component_id == component_id {
                continue;
            }
            let seen = Seen {
                component: logged.component_id.clone(),
                event: logged.event_type.clone(),
                message: logged.message.clone().unwrap_or_default(),
                timestamp: logged.timestamp.clone(),
            };
            decisions.extend(tracker.on_event(&rules, &seen, now));
            let observed = incidents::Observed {
                event_id: logged.id,
                component: &logged.component_id,
                event: &logged.event_type,
                message: logged.message.as_deref().unwrap_or(""),
            };
            if let Some(id) = incident_rules.on_recovered(&observed) {
                match close_incident(&conn, &logged.component_id, id, Some(logged.id)) {
                    Ok(()) => incident_rules.closed(&logged.component_id),
                    Err(error) => tracing::warn!("cannot close incident {id}: {error}"),
                }
            }
            if let Some(opening) = incident_rules.on_event(&observed, now) {
                match open_incident(&conn, &home, &opening) {
                    Ok(id) => incident_rules.opened(&opening.component, id, opening.kind),
                    Err(error) => tracing::warn!(
                        "cannot record the {} incident of {}: {error}",
                        opening.kind,
                        opening.component
                    ),
                }
            }
        }
        if now.duration_since(recoveries_checked) >= RECOVERY_CHECK {
            recoveries_checked = now;
            for (component, id) in incident_rules.recovered(|c| standing(&conn, c)) {
                match close_incident(&conn, &component, id, None) {
                    Ok(()) => incident_rules.closed(&component),
                    Err(error) => tracing::warn!("cannot close incident {id}: {error}"),
                }
            }
        }
        decisions.extend(tracker.on_tick(&rules, now));
        if !events.is_empty() {
            save_cursor(&conn, cursor);
        }
        for decision in decisions {
            match decision {
                Decision::Suppress {
                    rule_id,
                    component,
                    event,
                } => {
                    let _ = conn.execute(
                        &format!("INSERT INTO {ALERT_LOG} (rule_id, component_id, event_type, outcome, detail) VALUES (?1, ?2, ?3, 'suppressed', 'within min_interval_s of the last delivery')"),
                        params![rule_id, component, event],
                    );
                }
                Decision::Send(alert) => {
                    let Some(rule) = rules.iter().find(|r| r.id == alert.rule_id) else {
                        continue;
                    };
                    // A hook's output goes to its side log through the log writer, bounded
                    // like every log (the FIFO is held here, for every hook).
                    let hook_log = matches!(rule.action, Action::Exec(_)).then(|| {
                        let settings = n0m1_core::Config::load(&home.config_path())
                            .map(|c| c.logs)
                            .unwrap_or_default();
                        hook_pipes.side_path(
                            &home,
                            n0m1_core::home::ALERT_HOOKS_LOG,
                            n0m1_core::logpipe::log_writer_running(&home),
                            &settings,
                        )
                    });
                    if let Err(alert) = deliveries.offer(rule.action.clone(), alert, hook_log) {
                        let _ = conn.execute(
                            &format!("INSERT INTO {ALERT_LOG} (rule_id, component_id, event_type, outcome, detail) VALUES (?1, ?2, ?3, 'dropped', ?4)"),
                            params![
                                alert.rule_id,
                                alert.component,
                                alert.event,
                                format!("{QUEUE} deliveries already wait behind {WORKERS} running; this one is dropped")
                            ],
                        );
                    }
                }
            }
        }
    }
    // Deliveries still out finish on their own threads (hooks are in the home's process
    // sweep, so `n0m1ctl stop` ends them); record what has come back.
    while let Ok(outcome) = done_rx.try_recv() {
        log_outcome(&conn, &outcome);
    }
    event(LifecycleEvent::Stopped, "stopped on signal");
    Ok(())
}

/// How often open incidents' components are looked at for a recovery.
const RECOVERY_CHECK: Duration = Duration::from_secs(1);

/// Opens an incident: evidence and the rules' diagnosis, the row, and an `INCIDENT_OPENED`
/// event under the component's id (so alert rules can send it on).
fn open_incident(conn: &Connection, home: &Home, opening: &Opening) -> rusqlite::Result<i64> {
    let evidence = evidence::gather(conn, home, opening);
    let transaction = conn.unchecked_transaction()?;
    let id = n0m1_core::incidents::open(
        &transaction,
        &n0m1_core::incidents::NewIncident {
            opened_at: n0m1_core::state::unix_now(),
            component_id: &opening.component,
            kind: opening.kind,
            evidence: &evidence.json,
            summary: &opening.summary,
            diagnosis: &evidence.diagnosis,
            diagnosis_source: "rules",
            suggested_action: opening.suggested,
            opened_by_event: Some(opening.trigger_event),
        },
    )?;
    // The main model explains it when it runs (the rules' diagnosis stands meanwhile, and
    // whenever the model's is refused).
    let model_runs = n0m1_core::components::find(&transaction, MAIN_LLM_ID)?
        .is_some_and(|row| row.desired_active);
    if model_runs {
        n0m1_protocol::llm_tables::notify(
            &transaction,
            MAIN_LLM_ID,
            &n0m1_protocol::llm_tables::Notification::Incident { id: Some(id) },
        )?;
    }
    LifecycleRecord::new(opening.component.as_str(), LifecycleEvent::IncidentOpened)
        .message(format!(
            "incident {id} ({}): {}",
            opening.kind, evidence.diagnosis
        ))
        .write(&transaction)?;
    transaction.commit()?;
    Ok(id)
}

/// Closes an incident: by a `METRIC_RECOVERED` event (`by_event`), or because the
/// component has run stably.
fn close_incident(
    conn: &Connection,
    component: &str,
    id: i64,
    by_event: Option<i64>,
) -> rusqlite::Result<()> {
    let transaction = conn.unchecked_transaction()?;
    if n0m1_core::incidents::close(&transaction, id, n0m1_core::state::unix_now(), by_event)? {
        let why = match by_event {
            Some(event) => format!("the metric recovered (event {event})"),
            None => format!(
                "{component} has run for {} s",
                incidents::STABLE_FOR.as_secs()
            ),
        };
        LifecycleRecord::new(component, LifecycleEvent::IncidentClosed)
            .message(format!("incident {id} closed: {why}"))
            .write(&transaction)?;
    }
    transaction.commit()
}

/// A component's recorded state, whether its process is the live one, and for how long.
fn standing(conn: &Connection, component: &str) -> Option<incidents::Standing> {
    let saved = n0m1_core::state::load(conn, component).ok().flatten()?;
    let alive = match (saved.pid, saved.pid_start_ticks) {
        (Some(pid), Some(ticks)) => process::is_same_process(pid, ticks),
        _ => false,
    };
    let uptime = saved
        .started_at
        .map(|at| (n0m1_core::state::unix_now() - at).max(0.0))
        .unwrap_or(0.0);
    Some(incidents::Standing {
        state: saved.state,
        alive,
        uptime: Duration::from_secs_f64(uptime),
    })
}

fn load_cursor(conn: &Connection) -> rusqlite::Result<i64> {
    let saved: Option<i64> = conn
        .query_row(
            &format!("SELECT last_event_id FROM {ALERT_CURSOR} WHERE id = 1"),
            [],
            |r| r.get(0),
        )
        .optional()?;
    match saved {
        Some(id) => Ok(id),
        // First start: history is not news.
        None => {
            let last = lifecycle::last_id(conn)?;
            save_cursor(conn, last);
            Ok(last)
        }
    }
}

fn save_cursor(conn: &Connection, id: i64) {
    if let Err(error) = conn.execute(
        &format!("INSERT INTO {ALERT_CURSOR} (id, last_event_id) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET last_event_id = excluded.last_event_id"),
        [id],
    ) {
        tracing::warn!("cannot save the alert cursor: {error}");
    }
}

/// The valid rules; a bad row is one ERROR event naming it and its field.
fn load_rules(
    conn: &Connection,
    home: &Home,
    me: &str,
    reported: &mut HashMap<i64, String>,
) -> Vec<Rule> {
    let rows = match rules::all(conn) {
        Ok(rows) => rows,
        Err(error) => {
            tracing::warn!("cannot read alert rules: {error}");
            return Vec::new();
        }
    };
    let hooks = home.hooks_dir();
    let mut valid = Vec::new();
    let mut now_reported = HashMap::new();
    for row in rows.iter().filter(|r| r.enabled) {
        match row.validate(&hooks) {
            Ok(rule) => valid.push(rule),
            Err(error) => {
                let message = error.to_string();
                if reported.get(&row.id) != Some(&message) {
                    let _ = LifecycleRecord::new(me, LifecycleEvent::Error)
                        .pid(std::process::id() as i32)
                        .message(message.as_str())
                        .write(conn);
                }
                now_reported.insert(row.id, message);
            }
        }
    }
    *reported = now_reported;
    valid
}

fn log_outcome(conn: &Connection, outcome: &Outcome) {
    let alert = &outcome.alert;
    if let Err(error) = conn.execute(
        &format!("INSERT INTO {ALERT_LOG} (rule_id, component_id, event_type, outcome, detail, suppressed) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
        params![
            alert.rule_id,
            alert.component,
            alert.event,
            if outcome.ok { "delivered" } else { "failed" },
            outcome.detail,
            alert.suppressed
        ],
    ) {
        tracing::warn!("cannot record an alert's outcome: {error}");
    }
}

/// One delivery waiting for a worker.
struct Job {
    action: Action,
    alert: Alert,
    hook_log: Option<std::path::PathBuf>,
}

/// `WORKERS` threads delivering from a bounded queue; outcomes come back on `done`.
struct DeliveryPool {
    queue: mpsc::SyncSender<Job>,
}

impl DeliveryPool {
    fn start(home: &Home, done: mpsc::Sender<Outcome>) -> DeliveryPool {
        let (queue, jobs) = mpsc::sync_channel::<Job>(QUEUE);
        let jobs = std::sync::Arc::new(std::sync::Mutex::new(jobs));
        for n in 0..WORKERS {
            let (jobs, done, home) = (jobs.clone(), done.clone(), home.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("alert-{n}"))
                .spawn(move || {
                    loop {
                        // The lock is held only to take a job, never while delivering.
                        let next = jobs.lock().map(|receiver| receiver.recv());
                        let Ok(Ok(job)) = next else { return };
                        let (ok, detail) = match &job.action {
                            Action::Exec(program) => {
                                let log = job.hook_log.clone().unwrap_or_else(|| {
                                    home.logs_dir().join(n0m1_core::home::ALERT_HOOKS_LOG)
                                });
                                run_hook(program, &job.alert, &home, log)
                            }
                            Action::Webhook(url) => post(url, &job.alert),
                        };
                        let _ = done.send(Outcome {
                            alert: job.alert,
                            ok,
                            detail,
                        });
                    }
                });
            if let Err(error) = spawned {
                tracing::error!("cannot start an alert delivery thread: {error}");
            }
        }
        DeliveryPool { queue }
    }

    /// Queues a delivery; the alert back when the queue is full.
    fn offer(
        &self,
        action: Action,
        alert: Alert,
        hook_log: Option<std::path::PathBuf>,
    ) -> Result<(), Alert> {
        self.queue
            .try_send(Job {
                action,
                alert,
                hook_log,
            })
            .map_err(|error| match error {
                mpsc::TrySendError::Full(job) | mpsc::TrySendError::Disconnected(job) => job.alert,
            })
    }
}

fn run_hook(
    program: &std::path::Path,
    alert: &Alert,
    home: &Home,
    log: std::path::PathBuf,
) -> (bool, String) {
    let spec = SpawnSpec {
        program: program.to_path_buf(),
        args: Vec::new(),
        env: vec![
            (ENV_HOME.to_owned(), home.root().as_os_str().to_owned()),
            ("N0M1_EVENT".to_owned(), alert.event.clone().into()),
            ("N0M1_COMPONENT".to_owned(), alert.component.clone().into()),
            ("N0M1_MESSAGE".to_owned(), alert.message.clone().into()),
            (
                "N0M1_SUPPRESSED".to_owned(),
                alert.suppressed.to_string().into(),
            ),
            ("N0M1_TIMESTAMP".to_owned(), alert.timestamp.clone().into()),
        ],
        stdout: log.clone(),
        stderr: log,
        current_dir: home.root().to_path_buf(),
    };
    let pid = match process::spawn(&spec) {
        Ok(spawned) => spawned.pid,
        Err(error) => return (false, error.to_string()),
    };
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let target = nix::unistd::Pid::from_raw(pid);
    let deadline = Instant::now() + HOOK_TIMEOUT;
    loop {
        match waitpid(target, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, 0)) => return (true, "exit code 0".into()),
            Ok(WaitStatus::Exited(_, code)) => return (false, format!("exit code {code}")),
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                return (false, format!("killed by {signal}"));
            }
            Ok(_) => {}
            Err(error) => return (false, format!("cannot wait for the hook: {error}")),
        }
        if Instant::now() >= deadline {
            process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = waitpid(target, None);
            return (false, format!("killed after {} s", HOOK_TIMEOUT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn post(url: &str, alert: &Alert) -> (bool, String) {
    let body = serde_json::json!({
        "event": alert.event,
        "component": alert.component,
        "message": alert.message,
        "timestamp": alert.timestamp,
        "suppressed": alert.suppressed,
    });
    let agent = ureq::AgentBuilder::new().timeout(WEBHOOK_TIMEOUT).build();
    match agent
        .post(url)
        .set("Content-Type", "application/json")
        .send_string(&body.to_string())
    {
        Ok(response) => (true, format!("HTTP {}", response.status())),
        Err(ureq::Error::Status(code, _)) => (false, format!("HTTP {code}")),
        Err(error) => (false, error.to_string()),
    }
}
