//! `llm_processor`: the main model, driven by `llm_notifications`.
//!
//! Notifications for its llm_id are handled in id order, each exactly once even across a
//! crash: the outputs and the `processed = 1` mark are written in one transaction, after the
//! (slow) generation. A crash before that commit leaves the notification unprocessed, to be
//! handled again; nothing is written twice.

use std::time::Duration;

use n0m1_core::access_log::AccessKind;
use n0m1_core::lifecycle::{LifecycleEvent, LifecycleRecord};
use n0m1_core::schema::LLM_NOTIFICATIONS;
use rusqlite::Connection;

use crate::generator::{GenerateError, Generator, Loaded, fnv1a};
use crate::llm_tables::{self, IoConfig, Notification, load_config};
use crate::runtime::Runtime;
use crate::tables::{self, TableName};

/// Rows of each table given to the model (newest first).
pub const ROWS_PER_TABLE: usize = 10;
const SYSTEM_PROMPT: &str =
    "You watch a computer's own metrics. Say in one or two plain sentences what the rows show.";

/// The rows of `table` as text lines, newest first.
fn read_rows(conn: &Connection, table: &TableName, limit: usize) -> rusqlite::Result<Vec<String>> {
    tables::latest_rows(conn, table, limit, |names, row| {
        let mut fields = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let value = match row.get_ref(i)? {
                rusqlite::types::ValueRef::Null => "NULL".to_owned(),
                rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                rusqlite::types::ValueRef::Real(v) => format!("{v:.2}"),
                rusqlite::types::ValueRef::Text(t) => {
                    String::from_utf8_lossy(t).chars().take(200).collect()
                }
                rusqlite::types::ValueRef::Blob(b) => format!("<{} bytes>", b.len()),
            };
            fields.push(format!("{name}={value}"));
        }
        Ok(fields.join(", "))
    })
}

/// The state the newest rows give, by rule: the newest `ALERT:` or `RECOVERED:` row (a nano
/// instance's threshold rows), so a reading leads with where things stand now rather than
/// with whichever row a model picked.
fn newest_state(rows: &[String]) -> Option<String> {
    rows.iter().find_map(|row| {
        [("RECOVERED:", "recovered"), ("ALERT:", "in alert")]
            .into_iter()
            .find_map(|(word, said)| {
                let at = row.find(word)?;
                Some(format!("{said}: {}", row[at + word.len()..].trim()))
            })
    })
}

/// The processor's state between notifications.
pub struct Processor {
    pub llm_id: String,
    pub component_id: String,
    pub config: Result<IoConfig, String>,
    pub generator: Option<Box<dyn Generator>>,
    /// Notifications wait for the model service (it was down at the last try).
    waiting_for_model: bool,
}

/// What handling one notification produced, before it is committed.
#[derive(Debug, Default)]
struct Handled {
    outputs: Vec<String>,
    events: Vec<(LifecycleEvent, String)>,
    /// The model service is down: nothing is committed, the notification stays unprocessed
    /// and is handled again, whole, once the service answers.
    deferred: Option<String>,
    /// An incident's diagnosis: (incident, the model's checked text or None, why the model's
    /// text was refused).
    diagnosis: Option<(i64, Option<String>, Option<String>)>,
}

const INCIDENT_SYSTEM_PROMPT: &str = "You help the operator of a process supervisor. From the evidence, say in two or three plain sentences what went wrong with the component and the likely cause. Use only names and numbers from the evidence.";

/// The evidence of an incident as the lines a model reads (and the checker checks against).
fn evidence_text(incident: &n0m1_core::incidents::Incident) -> String {
    let evidence: serde_json::Value =
        serde_json::from_str(&incident.evidence).unwrap_or(serde_json::Value::Null);
    let text = |v: &serde_json::Value| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    };
    let mut lines = vec![
        format!(
            "Incident {}: {} of component {}.",
            incident.id, incident.kind, incident.component_id
        ),
        format!("Summary: {}", incident.summary),
        "Recent events, oldest first:".to_owned(),
    ];
    for event in evidence["events"].as_array().into_iter().flatten() {
        // No timestamps: their digits would make any small number look like evidence.
        lines.push(format!(
            "- {}: {}",
            text(&event["event"]),
            text(&event["message"])
        ));
    }
    let stderr: Vec<String> = evidence["stderr_tail"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    if !stderr.is_empty() {
        lines.push("Last lines on stderr:".to_owned());
        lines.extend(stderr.iter().rev().take(8).rev().map(|l| format!("- {l}")));
    }
    let state = &evidence["state"];
    if state.is_object() {
        lines.push(format!(
            "State: {}, restarts {}, last exit: {}",
            text(&state["state"]),
            text(&state["restarts"]),
            text(&state["last_exit"])
        ));
    }
    lines.push(format!("Limits: {}", text(&evidence["limits"])));
    lines.join("\n")
}

impl Processor {
    pub fn new(
        conn: &Connection,
        llm_id: &str,
        component_id: &str,
        generator: Option<Box<dyn Generator>>,
    ) -> Processor {
        Processor {
            llm_id: llm_id.to_owned(),
            component_id: component_id.to_owned(),
            config: load_config(conn, llm_id),
            generator,
            waiting_for_model: false,
        }
    }

    fn summarise(&mut self, conn: &Connection, tables_list: &str, handled: &mut Handled) {
        let (good, bad) = tables::validate_list(conn, tables_list);
        for error in bad {
            handled
                .events
                .push((LifecycleEvent::Error, format!("skipping a table: {error}")));
        }
        for table in good {
            let rows = match read_rows(conn, &table, ROWS_PER_TABLE) {
                Ok(rows) => rows,
                Err(error) => {
                    handled.events.push((
                        LifecycleEvent::Error,
                        format!("cannot read {table}: {error}"),
                    ));
                    continue;
                }
            };
            let _ = n0m1_core::access_log::record_access(
                conn,
                &self.component_id,
                table.as_str(),
                AccessKind::Read,
            );
            let digest = format!(
                "{table} rows={} digest={:016x}",
                rows.len(),
                fnv1a(rows.join("\n").as_bytes())
            );
            let content = match &mut self.generator {
                // Nothing to read is said plainly rather than asked of the model.
                Some(_) if rows.is_empty() => format!("{table}: no rows yet"),
                Some(generator) => {
                    let prompt = format!(
                        "Table {table}, latest {} rows (newest first):\n{}\nSummary:",
                        rows.len(),
                        rows.join("\n")
                    );
                    let completed = generator.complete(Some(SYSTEM_PROMPT), &prompt);
                    if let Err(GenerateError::ServiceDown(reason)) = &completed {
                        handled.deferred = Some(reason.clone());
                        return;
                    }
                    if completed.is_ok() && std::mem::take(&mut self.waiting_for_model) {
                        handled.events.push((
                            LifecycleEvent::ModelAvailable,
                            "the model service answers again; waiting notifications are handled"
                                .into(),
                        ));
                    }
                    let now = newest_state(&rows)
                        .map(|state| format!("now {state}; "))
                        .unwrap_or_default();
                    match completed {
                        Ok(text) => match crate::checker::check_against(&text, &rows.join("\n"))
                            .and_then(|text| crate::checker::not_copied(&text, &prompt))
                            .and_then(|text| crate::checker::not_a_row(&text, &rows))
                        {
                            Ok(reading) => format!("{table}: {now}{reading}"),
                            Err(reason) => format!(
                                "{table}: {now}model: rejected ({reason}) | {} rows, newest: {}",
                                rows.len(),
                                rows[0].chars().take(300).collect::<String>()
                            ),
                        },
                        Err(error) => {
                            handled.events.push((
                                LifecycleEvent::Error,
                                format!("generation failed for {table}: {error}; wrote a digest"),
                            ));
                            digest
                        }
                    }
                }
                None => digest,
            };
            handled.outputs.push(content);
        }
    }

    /// A model's diagnosis of an incident, checked against its evidence; the rules' stands
    /// when the model's is refused or there is no model.
    fn diagnose(&mut self, conn: &Connection, id: Option<i64>, handled: &mut Handled) {
        let Some(id) = id else {
            handled.events.push((
                LifecycleEvent::Error,
                "INCIDENT without an incident id as its payload".into(),
            ));
            return;
        };
        let incident = match n0m1_core::incidents::get(conn, id) {
            Ok(Some(incident)) => incident,
            Ok(None) => {
                handled
                    .events
                    .push((LifecycleEvent::Error, format!("no incident {id}")));
                return;
            }
            Err(error) => {
                handled.events.push((
                    LifecycleEvent::Error,
                    format!("cannot read incident {id}: {error}"),
                ));
                return;
            }
        };
        let Some(generator) = &mut self.generator else {
            handled.diagnosis = Some((
                id,
                None,
                Some("no model loaded: the rules' diagnosis stands".into()),
            ));
            return;
        };
        let evidence = evidence_text(&incident);
        let prompt = format!("{evidence}\nDiagnosis:");
        match generator.complete(Some(INCIDENT_SYSTEM_PROMPT), &prompt) {
            Err(GenerateError::ServiceDown(reason)) => handled.deferred = Some(reason),
            Err(error) => {
                handled.diagnosis = Some((id, None, Some(format!("generation failed: {error}"))));
            }
            Ok(text) => {
                handled.diagnosis = Some(
                    match crate::checker::check_diagnosis(&text, &evidence, &incident.kind, &prompt)
                    {
                        Ok(checked) => (id, Some(checked), None),
                        Err(reason) => (id, None, Some(reason)),
                    },
                );
            }
        }
    }

    fn handle(&mut self, conn: &Connection, notification: &Notification) -> Handled {
        let mut handled = Handled::default();
        match notification {
            Notification::Incident { id } => self.diagnose(conn, *id, &mut handled),
            Notification::ConfigReload => {
                self.config = load_config(conn, &self.llm_id);
                match &self.config {
                    Ok(config) => handled.events.push((
                        LifecycleEvent::ConfigReloaded,
                        format!(
                            "reads {}, writes {}",
                            config.read_tables, config.output_table
                        ),
                    )),
                    Err(error) => handled.events.push((LifecycleEvent::Error, error.clone())),
                }
            }
            Notification::Run {
                tables: Some(payload),
            }
            | Notification::Push {
                tables: Some(payload),
            } if !payload.trim().is_empty() => self.summarise(conn, payload, &mut handled),
            Notification::Run { .. } => match &self.config {
                Ok(config) => {
                    let list = config.read_tables.clone();
                    self.summarise(conn, &list, &mut handled);
                }
                Err(error) => handled.events.push((
                    LifecycleEvent::Error,
                    format!("RUN without a usable config: {error}"),
                )),
            },
            Notification::Push { .. } => handled.events.push((
                LifecycleEvent::Error,
                "PUSH without a payload naming tables".into(),
            )),
            Notification::PullRequest { what } => handled
                .outputs
                .push(format!("REQUEST:{}", what.as_deref().unwrap_or(""))),
            Notification::Unknown { kind, .. } => handled.events.push((
                LifecycleEvent::Error,
                format!("unknown notification type {kind:?}; marked processed"),
            )),
        }
        handled
    }

    /// Handles every unprocessed notification of this llm, oldest first; returns how many.
    pub fn handle_pending(&mut self, conn: &Connection) -> rusqlite::Result<usize> {
        let pending = llm_tables::pending(conn, &self.llm_id, 100)?;
        let mut count = 0;
        for llm_tables::Pending { id, notification } in pending {
            let kind = notification.kind().to_owned();
            let mut handled = self.handle(conn, &notification);
            if let Some(reason) = handled.deferred {
                // Later notifications wait too, so they are still handled in order.
                if !std::mem::replace(&mut self.waiting_for_model, true) {
                    LifecycleRecord::new(&self.component_id, LifecycleEvent::ModelUnavailable)
                        .pid(std::process::id() as i32)
                        .message(format!(
                            "notification {id} ({kind}) and those after it wait, unprocessed: {reason}"
                        ))
                        .write(conn)?;
                }
                break;
            }
            let output_table = self.config.as_ref().map(|c| c.output_table.clone());
            if !handled.outputs.is_empty() && output_table.is_err() {
                handled.events.push((
                    LifecycleEvent::Error,
                    "no valid output_table; output dropped".into(),
                ));
                handled.outputs.clear();
            }
            let transaction = conn.unchecked_transaction()?;
            if !llm_tables::claim(&transaction, id)? {
                continue; // handled meanwhile by another instance
            }
            if let Ok(table) = &output_table {
                for content in &handled.outputs {
                    llm_tables::write_output(&transaction, table, &self.llm_id, content)?;
                }
            }
            if let Some((incident, text, rejected)) = &handled.diagnosis {
                let source = self
                    .generator
                    .as_ref()
                    .map_or_else(|| "rules".to_owned(), |g| g.describe());
                match text {
                    Some(text) => n0m1_core::incidents::set_diagnosis(
                        &transaction,
                        *incident,
                        text,
                        &source,
                        None,
                    )?,
                    None => n0m1_core::incidents::keep_rules_diagnosis(
                        &transaction,
                        *incident,
                        rejected.as_deref().unwrap_or("refused"),
                    )?,
                }
            }
            for (event, message) in &handled.events {
                let message = format!("notification {id} ({kind}): {message}");
                LifecycleRecord::new(&self.component_id, *event)
                    .pid(std::process::id() as i32)
                    .message(&message)
                    .write(&transaction)?;
            }
            transaction.commit()?;
            count += 1;
        }
        Ok(count)
    }
}

pub fn run(mut runtime: Runtime, llm_id: &str, generator: Loaded) -> anyhow::Result<()> {
    let generator = match generator {
        Ok(generator) => {
            runtime.event(
                LifecycleEvent::StartedSuccessfully,
                &format!("serving {llm_id} with {}", generator.describe()),
            );
            Some(generator)
        }
        Err(reason) => {
            runtime.event(
                LifecycleEvent::StartedSuccessfully,
                &format!("serving {llm_id} in digest mode"),
            );
            runtime.event(
                LifecycleEvent::ModelUnavailable,
                &format!("{reason}; serving in digest mode (outputs are digests of the rows read)"),
            );
            None
        }
    };
    let mut processor = Processor::new(&runtime.conn, llm_id, &runtime.component_id, generator);
    if let Err(error) = &processor.config {
        runtime.event(LifecycleEvent::Error, error);
    }
    runtime.access(LLM_NOTIFICATIONS, AccessKind::Write);
    runtime.serve(Duration::from_secs(5), |conn| {
        // A shared model is opened again as soon as the service is back, not only when the
        // next notification needs it.
        if let Some(generator) = &mut processor.generator {
            generator.keep_ready();
        }
        if let Err(error) = processor.handle_pending(conn) {
            tracing::warn!(%error, "cannot handle notifications now; trying again");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::params;

    struct Echo;
    impl Generator for Echo {
        fn describe(&self) -> String {
            "echo".into()
        }
        fn complete(&mut self, _: Option<&str>, prompt: &str) -> Result<String, GenerateError> {
            // The newest row it was shown (numbers from the rows pass the checker).
            Ok(format!("saw {}", prompt.lines().nth(1).unwrap_or_default()))
        }
    }

    fn db() -> Connection {
        let conn = crate::testing::db();
        conn.execute_batch(
            "INSERT INTO cpu_usage_summary (nano_id, content) VALUES ('cpu_usage', 'busy'), ('cpu_usage', 'calm');
             INSERT INTO memory_usage_summary (nano_id, content) VALUES ('mem_usage', 'fine');",
        )
        .unwrap();
        conn
    }

    fn notify(conn: &Connection, kind: &str, payload: Option<&str>) {
        conn.execute(
            "INSERT INTO llm_notifications (llm_id, notification_type, payload) VALUES ('main_llm_processor', ?1, ?2)",
            params![kind, payload],
        )
        .unwrap();
    }

    /// Says what it is told to, whatever it is asked.
    struct Scripted(String);
    impl Generator for Scripted {
        fn describe(&self) -> String {
            "scripted".into()
        }
        fn complete(&mut self, _: Option<&str>, _: &str) -> Result<String, GenerateError> {
            Ok(self.0.clone())
        }
    }

    #[test]
    fn an_incident_diagnosis_stands_only_when_the_evidence_bears_it_out() {
        let conn = db();
        let evidence = serde_json::json!({
            "events": [
                {"time": "2026-12-07 10:00:01", "event": "CRASHED", "message": "exit code 3 after 0.1 s"},
                {"time": "2026-12-07 10:00:02", "event": "CRASHED", "message": "exit code 3 after 0.1 s"},
            ],
            "stderr_tail": ["boom: cannot open settings.toml"],
            "state": {"state": "backoff", "restarts": 3, "last_exit": "exit code 3"},
            "limits": "none",
        });
        let incident = n0m1_core::incidents::open(
            &conn,
            &n0m1_core::incidents::NewIncident {
                opened_at: 1.0,
                component_id: "flaky",
                kind: n0m1_core::incidents::IncidentKind::CrashLoop,
                evidence: &evidence.to_string(),
                summary: "flaky crashed 3 times within 60 s",
                diagnosis: "rules said so",
                diagnosis_source: "rules",
                suggested_action: n0m1_core::incidents::SuggestedAction::Stop,
                opened_by_event: None,
            },
        )
        .unwrap();
        // (what the model says, accepted, the reason when refused)
        let table = [
            (
                "flaky crashed because it cannot open settings.toml; it exits with code 3.",
                true,
                "",
            ),
            ("flaky ran out of memory.", false, "out of memory"),
            ("flaky is hung.", false, "'hung'"),
            ("flaky crashed 7 times.", false, "number 7"),
            ("other_thing broke flaky.", false, "'other_thing'"),
            ("flaky was killed by SIGKILL.", false, "'SIGKILL'"),
        ];
        for (said, accepted, reason) in table {
            notify(&conn, "INCIDENT", Some(&incident.to_string()));
            let mut processor = Processor::new(
                &conn,
                "main_llm_processor",
                "main_llm_processor",
                Some(Box::new(Scripted(said.into()))),
            );
            assert_eq!(processor.handle_pending(&conn).unwrap(), 1);
            let row = n0m1_core::incidents::get(&conn, incident).unwrap().unwrap();
            if accepted {
                assert_eq!(row.diagnosis.as_deref(), Some(said), "{said}");
                assert_eq!(row.diagnosis_source.as_deref(), Some("scripted"));
            } else {
                assert_eq!(row.diagnosis.as_deref(), Some("rules said so"), "{said}");
                let rejected = row.diagnosis_rejected.unwrap_or_default();
                assert!(rejected.contains(reason), "{said}: {rejected}");
            }
            // Back to the rules' diagnosis for the next line.
            n0m1_core::incidents::set_diagnosis(&conn, incident, "rules said so", "rules", None)
                .unwrap();
        }
        // No model: the rules' diagnosis stands, and says why.
        notify(&conn, "INCIDENT", Some(&incident.to_string()));
        let mut digest = Processor::new(&conn, "main_llm_processor", "main_llm_processor", None);
        digest.handle_pending(&conn).unwrap();
        let row = n0m1_core::incidents::get(&conn, incident).unwrap().unwrap();
        assert!(row.diagnosis_rejected.unwrap().contains("no model"));
        // A payload that is no incident is an error event, and processed.
        notify(&conn, "INCIDENT", Some("x; DROP TABLE incidents"));
        assert_eq!(digest.handle_pending(&conn).unwrap(), 1);
    }

    #[test]
    fn each_notification_type_is_handled_once() {
        let conn = db();
        let mut processor = Processor::new(
            &conn,
            "main_llm_processor",
            "main_llm_processor",
            Some(Box::new(Echo)),
        );
        notify(&conn, "RUN", None);
        notify(&conn, "PUSH", Some("cpu_usage_summary"));
        notify(&conn, "PULL_REQUEST", Some("metrics"));
        notify(&conn, "BOGUS", None);
        assert_eq!(processor.handle_pending(&conn).unwrap(), 4);
        assert_eq!(
            processor.handle_pending(&conn).unwrap(),
            0,
            "nothing is handled twice"
        );
        let out = crate::testing::texts(&conn, "SELECT content FROM llm_outputs ORDER BY id");
        // RUN: one row per read table (three default summaries); PUSH: its payload only.
        assert_eq!(out.len(), 3 + 1 + 1, "{out:?}");
        assert_eq!(
            out[0], "cpu_temp_summary: no rows yet",
            "an empty table is not sent to the model"
        );
        assert!(
            out[1].starts_with("cpu_usage_summary: saw id=2,"),
            "{out:?}"
        );
        assert!(out[1].ends_with("content=calm"), "newest first: {out:?}");
        assert_eq!(out[3], out[1], "PUSH reads the same rows");
        assert_eq!(out[4], "REQUEST:metrics");
        let unprocessed: i64 = conn
            .query_row(
                "SELECT count(*) FROM llm_notifications WHERE processed = 0",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(unprocessed, 0);
        let errors: i64 = conn.query_row("SELECT count(*) FROM component_lifecycle_log WHERE event_type = 'ERROR' AND message LIKE '%BOGUS%'", [], |r| r.get(0)).unwrap();
        assert_eq!(errors, 1);
    }

    /// Down while `down` is set (shared with the test), then the echo.
    struct Flaky(std::rc::Rc<std::cell::Cell<bool>>);
    impl Generator for Flaky {
        fn describe(&self) -> String {
            "flaky".into()
        }
        fn complete(
            &mut self,
            system: Option<&str>,
            prompt: &str,
        ) -> Result<String, GenerateError> {
            if self.0.get() {
                return Err(GenerateError::ServiceDown(
                    "the model service is down".into(),
                ));
            }
            Echo.complete(system, prompt)
        }
    }

    #[test]
    fn while_the_model_service_is_down_notifications_wait_unprocessed_and_in_order() {
        let conn = db();
        let down = std::rc::Rc::new(std::cell::Cell::new(true));
        let mut processor = Processor::new(
            &conn,
            "main_llm_processor",
            "main_llm_processor",
            Some(Box::new(Flaky(down.clone()))),
        );
        notify(&conn, "PUSH", Some("cpu_usage_summary"));
        notify(&conn, "PULL_REQUEST", Some("later"));
        let unprocessed = || -> i64 {
            conn.query_row(
                "SELECT count(*) FROM llm_notifications WHERE COALESCE(processed, 0) = 0",
                [],
                |r| r.get(0),
            )
            .unwrap()
        };
        let events = |kind: &str| -> Vec<String> {
            crate::testing::texts(
                &conn,
                &format!("SELECT message FROM component_lifecycle_log WHERE event_type = '{kind}'"),
            )
        };
        for _ in 0..3 {
            assert_eq!(processor.handle_pending(&conn).unwrap(), 0);
        }
        assert_eq!(unprocessed(), 2, "both wait, the second behind the first");
        assert!(crate::testing::texts(&conn, "SELECT content FROM llm_outputs").is_empty());
        let waiting = events("MODEL_UNAVAILABLE");
        assert_eq!(waiting.len(), 1, "one event per outage: {waiting:?}");
        assert!(waiting[0].contains("notification 1 (PUSH)"), "{waiting:?}");
        down.set(false);
        assert_eq!(processor.handle_pending(&conn).unwrap(), 2);
        assert_eq!(unprocessed(), 0);
        let out = crate::testing::texts(&conn, "SELECT content FROM llm_outputs ORDER BY id");
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].starts_with("cpu_usage_summary: saw "), "{out:?}");
        assert_eq!(out[1], "REQUEST:later");
        assert_eq!(events("MODEL_AVAILABLE").len(), 1);
    }

    #[test]
    fn digest_mode_and_config_reload() {
        let conn = db();
        let mut processor = Processor::new(&conn, "main_llm_processor", "main_llm_processor", None);
        conn.execute("UPDATE llm_io_config SET read_tables = 'memory_usage_summary' WHERE llm_id = 'main_llm_processor'", []).unwrap();
        notify(&conn, "CONFIG_RELOAD", None);
        notify(&conn, "RUN", None);
        processor.handle_pending(&conn).unwrap();
        let out = crate::testing::texts(&conn, "SELECT content FROM llm_outputs ORDER BY id");
        assert_eq!(out.len(), 1);
        assert!(
            out[0].starts_with("memory_usage_summary rows=1 digest="),
            "{out:?}"
        );
    }

    #[test]
    fn hostile_tables_leave_the_database_intact() {
        let conn = db();
        conn.execute(
            "UPDATE llm_io_config SET read_tables = 'x; DROP TABLE autorun_components, cpu_usage_summary' WHERE llm_id = 'main_llm_processor'",
            [],
        )
        .unwrap();
        let mut processor = Processor::new(&conn, "main_llm_processor", "main_llm_processor", None);
        notify(&conn, "RUN", None);
        notify(&conn, "PUSH", Some("missing_table"));
        notify(&conn, "PUSH", Some("sqlite_master"));
        notify(&conn, "PUSH", Some("\"autorun_components\"; --"));
        processor.handle_pending(&conn).unwrap();
        let components: i64 = conn
            .query_row("SELECT count(*) FROM autorun_components", [], |r| r.get(0))
            .unwrap();
        assert!(components > 0, "autorun_components survives");
        assert_eq!(
            crate::testing::texts(&conn, "SELECT content FROM llm_outputs ORDER BY id").len(),
            1,
            "only the valid table of RUN was read"
        );
        let errors: i64 = conn
            .query_row(
                "SELECT count(*) FROM component_lifecycle_log WHERE event_type = 'ERROR'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(errors, 4);
        // A bad output table: notifications still end processed, with an error.
        conn.execute("UPDATE llm_io_config SET output_table = 'autorun_components' WHERE llm_id = 'main_llm_processor'", []).unwrap();
        notify(&conn, "CONFIG_RELOAD", None);
        notify(&conn, "PULL_REQUEST", Some("x"));
        processor.handle_pending(&conn).unwrap();
        let unprocessed: i64 = conn
            .query_row(
                "SELECT count(*) FROM llm_notifications WHERE processed = 0",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(unprocessed, 0);
    }
}
